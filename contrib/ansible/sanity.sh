#!/usr/bin/env bash
# ansible-test sanity on the handoff.fleet collection, every test it has,
# on the Python of the virtualenv that holds ansible-core (default:
# target/ansible-venv, as .ci/run makes it; or $1).
#
# ansible-test makes a virtualenv per test and bootstraps pip in each with a
# get-pip script it downloads from its own CI host, which this machine
# cannot reach (only the package registries are). A stand-in takes that
# script's place in a private HOME: pip from the interpreter's ensurepip,
# then the packages ansible-test asks for, from the package index as pip
# is configured here. Everything else is ansible-test's own.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/../../target/ansible-venv}"
python="$venv/bin/python3"
[ -x "$venv/bin/ansible-test" ] || { echo "no ansible-test in $venv (pip install ansible-core)" >&2; exit 2; }
version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
pip_version="$("$python" - <<PY
from ansible_test._internal.python_requirements import get_venv_packages
class Python:
    version = "$version"
print(get_venv_packages(Python())["pip"])
PY
)"
home="$(mktemp -d)"
trap 'rm -rf "$home"' EXIT
cache="$home/.ansible/test/cache"
mkdir -p "$cache"
cat > "$cache/get_pip_${pip_version//./_}.py" <<'PY'
"""Stand-in for get-pip.py: pip from the interpreter's ensurepip, then the
requested packages from the package index."""
import ensurepip
import os
import subprocess
import sys

ensurepip.bootstrap()
# ensurepip points pip at an empty config for itself; the install that
# follows reads the machine's (index, certificates).
os.environ.pop('PIP_CONFIG_FILE', None)
args = [a for a in sys.argv[1:] if a not in ('--no-setuptools', '--no-wheel')]
subprocess.check_call([sys.executable, '-m', 'pip', 'install', '--quiet'] + args)
PY
cd "$here/ansible_collections/handoff/fleet"
rm -rf tests/output
status=0
HOME="$home" PATH="$venv/bin:$PATH" PYTHONWARNINGS=ignore \
  "$venv/bin/ansible-test" sanity --venv --python "$version" --color no || status=$?
rm -rf tests/output
exit "$status"
