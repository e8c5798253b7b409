"""Pipeline: the commands' orchestration of ingest -> passes -> lower -> compile -> measure -> report."""
