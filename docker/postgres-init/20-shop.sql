-- Run once by the postgres image when it creates the database: the source tables
-- configs/postgres-cdc.yaml copies and streams (the postgres-cdc service), with a
-- few rows so its first snapshot has something to move. The replica schema's
-- tables (and the schema) are made by the sink (auto_create).
CREATE TABLE public.customers (id bigint PRIMARY KEY, name text, email text,
                               balance numeric(12,2), tags text[], updated_at timestamptz);
CREATE TABLE public.orders (id bigint PRIMARY KEY, customer_id bigint, total numeric(12,2),
                            items jsonb, created_at timestamptz);
INSERT INTO public.customers VALUES
    (1, 'Ann', 'ann@example.com', 120.50, '{vip}', now()),
    (2, 'Bo', 'bo@example.com', 0, '{}', now());
INSERT INTO public.orders VALUES
    (10, 1, 99.90, '[{"sku": "A-1", "qty": 2}]', now());
