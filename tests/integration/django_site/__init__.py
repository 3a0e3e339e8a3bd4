"""A small Django project for tests/integration/test_django.py: the site's own
package is its one app, with tasks in `tasks.py`. Paths come from the environment
(`UNDERWAY_TEST_DB`, `UNDERWAY_TEST_STORE`), so that the test and the
`manage.py`-style subprocesses it starts share one database and one job store."""
