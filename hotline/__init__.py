"""The platform every stage runs on, and that knows no feature.

``kernel`` (messages, the stage protocol, the failure policy, item states), ``runtime``
(embedded bus and Kafka), ``storage`` (engine, tables, migrations, one repository per
aggregate), ``web`` (authentication and the app shell) and ``config``. Nothing here
imports ``services`` or ``entrypoints``: a test (tests/unit/test_layering.py) and the
import-linter contract in pyproject.toml keep it so.
"""
