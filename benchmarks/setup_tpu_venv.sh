#!/usr/bin/env bash
# A venv with the TPU compiler (libtpu), for compiling alignjax's programs for a TPU pod from a
# machine without TPUs (benchmarks/memory_plan.py --target=v5e:8x8).
#
#   benchmarks/setup_tpu_venv.sh [VENV]      # default: /work/tpuvenv if /work exists, else
#                                            # $HOME/.venvs/alignjax-tpu
#   VENV/bin/python benchmarks/memory_plan.py --algo=dpo --model=llama3_8b --target=v5e:8x8 ...
#
# jax[tpu] is pinned to the jax of the python that runs this script (the system python's), so
# both compile the same programs; alignjax itself is installed editable without its dependencies,
# which are listed here from setup.py's install_requires. About 40 s with a warm pip cache.
# The last step compiles a small sharded function for 64 abstract v5e devices and prints its
# memory analysis.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -ge 1 ]]; then
  venv="$1"
elif [[ -d /work ]]; then
  venv=/work/tpuvenv
else
  venv="${HOME}/.venvs/alignjax-tpu"
fi
python="${PYTHON:-python3}"
jax_version="$("${python}" -c 'import jax; print(jax.__version__)' 2>/dev/null || echo 0.10.2)"
flax_version="$("${python}" -c 'import flax; print(flax.__version__)' 2>/dev/null || echo 0.12.8)"

echo "+ ${python} -m venv ${venv}"
"${python}" -m venv "${venv}"
pip=("${venv}/bin/pip" install -q)
"${pip[@]}" --upgrade pip
"${pip[@]}" "jax[tpu]==${jax_version}" "flax==${flax_version}" optax orbax-checkpoint chex \
  absl-py ml-collections "tensorflow-datasets>=4.9.9" array-record "grain>=0.2.12" tensorboardX \
  numpy scipy matplotlib
"${pip[@]}" --no-deps -e "${here}"

# The check: 64 abstract v5e devices, and a sharded matmul compiled for them with its memory.
TPU_WORKER_HOSTNAMES=localhost JAX_PLATFORMS=cpu "${venv}/bin/python" - <<'EOF'
import jax
import jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import NamedSharding, PartitionSpec as P

devices = topologies.get_topology_desc(platform='tpu', topology_name='v5e:8x8').devices
assert len(devices) == 64, len(devices)
mesh = jax.make_mesh((1, 64, 1), ('data', 'fsdp', 'tensor'), devices=devices,
                     axis_types=(jax.sharding.AxisType.Auto,) * 3)
x = jax.ShapeDtypeStruct((8192, 4096), jnp.bfloat16, sharding=NamedSharding(mesh, P('fsdp')))
w = jax.ShapeDtypeStruct((4096, 4096), jnp.bfloat16,
                         sharding=NamedSharding(mesh, P(None, 'fsdp')))
compiled = jax.jit(lambda x, w: jnp.tanh(x @ w)).lower(x, w).compile()
print(f'{len(devices)} x {devices[0].device_kind}:', compiled.memory_analysis())
EOF
echo "TPU compiler ready: ${venv}/bin/python benchmarks/memory_plan.py --target=v5e:8x8 ..."
