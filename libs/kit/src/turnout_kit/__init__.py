"""The kit every Turnout service is built from.

Small modules, imported by name (nothing heavy happens on `import turnout_kit`):

- `settings`    ServiceSettings, the base of every service's settings
- `logging`     structlog JSON logs, correlation ids, PII redaction (`redaction`)
- `db`          async engine and sessions, ensure_database, run_migrations
- `alembic_env` the body of each service's migrations/env.py
- `problems`    RFC 9457 problem details and the exception handlers
- `auth`        roles, Caller, tokens, the current_caller / require_roles dependencies
- `app`         create_app: health, readiness, metrics, middleware, broker lifespan
- `readiness`   database_check, kafka_check, broker_check
- `cli_token`   token_command behind `turnout token`
"""
