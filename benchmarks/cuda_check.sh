#!/usr/bin/env bash
# The one command for a session lent a GPU: every CUDA test (pytest -m cuda) and a CUDA benchmark, in one call.
#
#   bash benchmarks/cuda_check.sh            # from the repository root; results under $OUT (or benchmarks/results/cuda)
#
# On the device machine python3 already holds torch, lightning and pytest; what the package needs beyond them
# (jsonargparse and docstring-parser, for the CLI's CUDA test) can travel as wheels in .whl/, made here with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl \
#       -c constraints.txt jsonargparse docstring-parser typeshed-client
# and are installed into a scratch folder first. The package itself runs from the working tree (PYTHONPATH).
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
out=${OUT:-benchmarks/results/cuda}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 2
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" || exit 2
"$python" -m pytest -m cuda -p no:cacheprovider -ra tests 2>&1 | tee "$out/cuda_tests.log"
tests=${PIPESTATUS[0]}
"$python" -m benchmarks --quick --only functions epoch --out "$out" 2>&1 | tee "$out/cuda_bench.log"
bench=${PIPESTATUS[0]}
echo "cuda tests: exit $tests; cuda benchmark: exit $bench (results in $out)"
exit $(( tests || bench ))
