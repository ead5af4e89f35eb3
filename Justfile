# Recipes mirroring the README commands. `pip install -e '.[dev]'` provides `just`.

venv := ".venv"

# Set up and run the two-instance demo (README command 1).
demo:
    python3 -m venv {{venv}} && {{venv}}/bin/pip install -q -e . && {{venv}}/bin/refserver demo

# Set up and run one instance (data in data/hs1).
run:
    python3 -m venv {{venv}} && {{venv}}/bin/pip install -q -e . && {{venv}}/bin/refserver init --data-dir data/hs1 --client-port 8008 --keep-existing && {{venv}}/bin/refserver run --data-dir data/hs1

# Set up and run the test suite (what CI runs).
test *ARGS:
    python3 -m venv {{venv}} && {{venv}}/bin/pip install -q -e '.[test]' && {{venv}}/bin/pytest {{ARGS}}

# ruff + mypy (strict), over refserver/ and tests/ (mypy takes both from pyproject.toml).
lint:
    {{venv}}/bin/ruff check refserver tests
    {{venv}}/bin/ruff format --check refserver tests
    {{venv}}/bin/mypy
