"""The training tests use the session fixtures of ``tests/conftest.py`` (``source_dir``,
``target_dir``, ``test_recipe``, ``trained_run``) and the constants of ``tests/tiny_data.py``."""
