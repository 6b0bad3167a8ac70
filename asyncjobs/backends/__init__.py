"""Storage: the ports the client and workers use (``base``) and their PostgreSQL adapter."""
