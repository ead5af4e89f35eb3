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

# Fleet benchmark of refserver against Synapse; writes docs/benchmarks.md (ARGS: --quick, --sizes 50,100).
bench *ARGS:
    python3 -m venv {{venv}} && {{venv}}/bin/pip install -q -e '.[test,bench]' && {{venv}}/bin/python -m benchmarks {{ARGS}}

# ruff + mypy (strict), over refserver/, tests/ and benchmarks/ (mypy takes them from pyproject.toml).
lint:
    {{venv}}/bin/ruff check refserver tests benchmarks
    {{venv}}/bin/ruff format --check refserver tests benchmarks
    {{venv}}/bin/mypy
