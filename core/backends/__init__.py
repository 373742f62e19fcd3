"""Log backends: the embedded log (default) and Apache Kafka."""
