"""The database: engine and sessions (the driver-error boundary), the ORM models, migrations."""
