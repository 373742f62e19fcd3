# Server fixtures (tests/servers/*) are pytest plugins; each adds itself here.
pytest_plugins: list[str] = ["tests.servers.postgres", "tests.servers.cassandra", "tests.servers.kafka"]
