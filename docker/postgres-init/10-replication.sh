#!/bin/sh
# Run once by the postgres image when it creates the database. Its pg_hba.conf
# lets other containers connect to databases but not to the replication
# pseudo-database, which a logical-replication (CDC) connection needs.
set -e
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
