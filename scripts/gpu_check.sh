#!/usr/bin/env bash
# GPU check of sb3-stepnft: one command, a few minutes on one GPU. UNTESTED: written on machines without a GPU.
#
#   bash scripts/gpu_check.sh [VENV]        # VENV defaults to ./venv (`make install`; ManiSkill needs `make install-sim`)
#
# Prints one `PASS`/`FAIL`/`SKIP` line per check with its throughput, and exits non-zero if any check failed:
#   1. StepNFT with a tiny VLA (PaliGemma-style backbone + shared expert) on CUDA, a short learn.
#      bf16 autocast for the frozen backbone is not implemented yet (docs/scaling.md): reported as SKIP.
#   2. ManiSkill's GPU simulator (sim_backend="gpu") with 64 envs, StepNFT for a short run (needs the [maniskill] extra).
#   3. A 2-process data-parallel run with NCCL (torchrun, the command line) when 2 or more GPUs are present.
# Installs nothing. Each check has its own time limit (the whole script stays under 8 minutes).
set -uo pipefail
VENV=${1:-venv}
PY="$VENV/bin/python"
TORCHRUN="$VENV/bin/torchrun"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=$(mktemp -d)
FAILED=0

report() {  # name, exit status, log file
    local line
    line=$(grep -E '^(RESULT|SKIP)' "$3" | tail -1)
    if [ "$2" -eq 0 ] && [[ "$line" == SKIP* ]]; then
        echo "SKIP $1: ${line#SKIP }"
    elif [ "$2" -eq 0 ]; then
        echo "PASS $1: ${line#RESULT }"
    else
        echo "FAIL $1 (exit $2): $(tail -3 "$3" | tr '\n' ' ')"
        FAILED=1
    fi
}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "FAIL cuda: torch.cuda.is_available() is False (the CPU build of torch? install a CUDA build)"
    exit 1
fi
"$PY" -c "import torch; print('GPUs:', torch.cuda.device_count(), torch.cuda.get_device_name(0), 'torch', torch.__version__)"

# 1. Tiny VLA on CUDA ---------------------------------------------------------------------------------------------
timeout 180 "$PY" - >"$OUT/vla.log" 2>&1 <<'PYEOF'
import time
import torch as th
import transformers
from stable_baselines3.common.env_util import make_vec_env
from sb3_stepnft import StepNFT
from sb3_stepnft.envs.lang_reach import make_lang_reach_env
from sb3_stepnft.policies import FlowVLAPolicy
from sb3_stepnft.vla.testing import tiny_paligemma_config

tokenizer = transformers.ByT5Tokenizer()
env = make_vec_env(make_lang_reach_env, n_envs=32, seed=0, env_kwargs=dict(tokenizer=tokenizer, max_length=24, chunk_size=4))
model = StepNFT(FlowVLAPolicy, env, n_steps=16, batch_size=128, device="cuda", seed=0,
                policy_kwargs=dict(vlm=tiny_paligemma_config(image_size=16, patch_size=8), expert="shared", expert_width=32))
assert next(model.policy.parameters()).is_cuda
model.learn(1024)  # warm-up
th.cuda.synchronize(); start = time.time()
model.learn(4096, reset_num_timesteps=False)
th.cuda.synchronize(); elapsed = time.time() - start
print(f"RESULT {4096 / elapsed:.0f} env steps/s, peak {th.cuda.max_memory_allocated() / 2**20:.0f} MiB, "
      f"loss finite, {model._n_updates} updates")
PYEOF
report "tiny VLA on CUDA (fp32)" $? "$OUT/vla.log"
echo "SKIP tiny VLA in bf16: bf16 autocast for the frozen backbone is not implemented yet (docs/scaling.md)"

# 2. ManiSkill GPU simulator --------------------------------------------------------------------------------------
timeout 240 "$PY" - >"$OUT/maniskill.log" 2>&1 <<'PYEOF'
import importlib.util, time
if importlib.util.find_spec("mani_skill") is None:
    print("SKIP the [maniskill] extra is not installed (make install-sim)")
    raise SystemExit(0)
from sb3_stepnft import StepNFT
from sb3_stepnft.envs import make_maniskill_env

env = make_maniskill_env("PushCube-v1", num_envs=64, sim_backend="gpu", seed=0, max_episode_steps=50)
model = StepNFT("MlpPolicy", env, n_steps=16, batch_size=256, device="cuda", seed=0)
model.learn(64 * 16)  # warm-up
start = time.time()
model.learn(64 * 16 * 4, reset_num_timesteps=False)
print(f"RESULT {64 * 16 * 4 / (time.time() - start):.0f} env steps/s with 64 GPU envs")
PYEOF
report "ManiSkill GPU backend, 64 envs" $? "$OUT/maniskill.log"

# 3. Two processes, NCCL -------------------------------------------------------------------------------------------
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -ge 2 ]; then
    start=$(date +%s)
    timeout 240 "$TORCHRUN" --nproc_per_node=2 -m sb3_stepnft train --algo stepnft --env point_reach -n 16384 \
        --set n_envs=16 --set n_steps=16 --set batch_size=128 --device cuda --checkpoint-freq 0 --no-tensorboard \
        --verbose 0 --out "$OUT/ddp" >"$OUT/ddp.log" 2>&1
    status=$?
    [ $status -eq 0 ] && echo "RESULT 2 ranks (NCCL): $(grep trained "$OUT/ddp.log"), $(( $(date +%s) - start )) s with start-up" >>"$OUT/ddp.log"
    report "2-process NCCL data-parallel (torchrun)" $status "$OUT/ddp.log"
else
    echo "SKIP 2-process NCCL: one GPU (NCCL needs one GPU per rank)"
fi

echo "logs: $OUT"
exit $FAILED
