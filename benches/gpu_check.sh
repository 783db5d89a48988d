#!/usr/bin/env bash
# The GPU check: GAE on CUDA tensors against a torch GPU loop, prompt sharing against the
# full forward and the sampler's decode cache against the plain one on CUDA, one PPO iteration of
# rlhf_fast against TRL on the GPU, and the pipeline under --fsdp on CUDA (nccl, one
# process; tests/test_fsdp.py covers 2 ranks on the CPU). Finishes in under 10 minutes on
# one H100/H200.
#
# Prepare on a machine with network access (builds the wheel, downloads the peers' wheels):
#     bash benches/gpu_check.sh --prepare
# Run on the CUDA machine (python3 with torch + CUDA and transformers, no network needed),
# from the repository root, with target/wheels/ and .whl/ copied along:
#     bash benches/gpu_check.sh [OUTPUT_DIR]
# Results: OUTPUT_DIR/gpu_gae.json, OUTPUT_DIR/gpu_e2e.json and the log (default: gpu_results/).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --prepare ]]; then
    make wheel
    mkdir -p .whl
    # trl and datasets (and what they need that the CUDA image lacks), for its Python 3.12.
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d .whl \
        trl==1.12.0 datasets dill multiprocess xxhash
    echo "ready: copy target/wheels/ and .whl/ with the checkout to the CUDA machine"
    exit 0
fi

out=${1:-gpu_results}
mkdir -p "$out"
python=${PYTHON:-python3}
site=/tmp/rlhf_fast_gpu_site
if ! $python -c "import rlhf_fast._native" 2>/dev/null; then
    wheel=$(ls target/wheels/rlhf_fast-*x86_64*.whl 2>/dev/null | head -1 || true)
    [[ -n $wheel ]] || { echo "error: no rlhf_fast wheel in target/wheels/; run --prepare first" >&2; exit 1; }
    $python -m pip install --quiet --no-index --no-deps --target "$site" "$wheel" .whl/*.whl 2>/dev/null \
        || $python -m pip install --quiet --no-index --no-deps --target "$site" "$wheel"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TRL_EXPERIMENTAL_SILENCE=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    timeout 180 $python benches/gpu_gae.py --output "$out/gpu_gae.json"
    trainers=""
    $python -c "import trl" 2>/dev/null || trainers="--only rlhf_fast"
    [[ -z $trainers ]] || echo "trl is not importable here: rlhf_fast alone"
    timeout 270 $python benches/e2e_ppo.py --device cuda --iterations 2 $trainers \
        --output "$out/gpu_e2e.json"
    # prompt sharing on CUDA: each prompt once through the trunk, the full forward's numbers.
    timeout 120 $python - <<'PY'
import torch, transformers
from rlhf_fast.models import next_token_logprobs, scored_positions
from rlhf_fast.prompt_sharing import full_rows, response_logprobs
torch.manual_seed(0)
config = transformers.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512,
    num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4)
model = transformers.AutoModelForCausalLM.from_config(config).cuda().eval()
prompts = torch.randint(1, 512, (8, 30), device="cuda")
prompt_mask = torch.ones_like(prompts)
prompt_mask[::2, :5] = 0
prompt_of = torch.arange(8, device="cuda").repeat_interleave(8)
responses = torch.randint(1, 512, (64, 48), device="cuda")
response_mask = torch.arange(48, device="cuda") < torch.randint(1, 49, (64, 1), device="cuda")
rows = (prompts, prompt_mask, prompt_of, responses, response_mask)
with torch.no_grad():
    shared = response_logprobs(model, *rows)
    ids, mask = full_rows(*rows)
    full = next_token_logprobs(model, ids, mask, scored_positions(mask, start=30))[0][:, 29:]
err = (shared - full).abs().max().item()
print(f"prompt sharing on CUDA: max |shared - full| = {err:.2e}")
assert err < 1e-3, err
# the sampler's decode cache on CUDA: the same draws as the plain DynamicCache
from rlhf_fast import decode_cache
from rlhf_fast.sampling import sample_responses
def sample(shared):
    supported = decode_cache.supported
    decode_cache.supported = supported if shared else (lambda trunk: False)
    try:
        torch.manual_seed(1)
        return sample_responses(model, prompts, prompt_mask, max_new_tokens=48, eos_token_id=2,
                                pad_token_id=0, num_samples=8)
    finally:
        decode_cache.supported = supported
a, b = sample(True), sample(False)
same = (a.tokens == b.tokens).all(0)  # float rounding may flip a late draw
first = int((~same).nonzero()[0, 0]) if not bool(same.all()) else a.tokens.shape[1]
err = (a.logprobs[:, :first] - b.logprobs[:, :first]).abs().max().item()
print(f"decode cache on CUDA: same tokens for {first} of {a.tokens.shape[1]} steps, "
      f"max |logprob diff| = {err:.2e}")
assert first >= 8 and err < 1e-3, (first, err)
PY
    # --fsdp: the pipeline's three stages with the model sharded (a group of one process),
    # then PPO resumed from its checkpoint; the saved policy loads without FSDP.
    fsdp="$out/fsdp"
    mkdir -p "$fsdp"
    for i in 1 2 3 4 5 6 7 8; do
        echo '{"prompt": "review the lamp :", "response": "the lamp is great ."}' >> "$fsdp/sft.jsonl"
        echo '{"prompt": "review the lamp :", "chosen": "it is great .", "rejected": "it is awful ."}' >> "$fsdp/prefs.jsonl"
        echo '{"prompt": "review the lamp :"}' >> "$fsdp/prompts.jsonl"
    done
    stages=(--fsdp --device "${FSDP_DEVICE:-cuda}" --tokenizer demo-words --no-progress
        --no-tensorboard --sft-data "$fsdp/sft.jsonl" --preference-data "$fsdp/prefs.jsonl"
        --prompts "$fsdp/prompts.jsonl" --output-dir "$fsdp/run" --sft.max-steps 4
        --sft.batch-size 8 --reward.max-steps 4 --reward.batch-size 4 --ppo.max-steps 2
        --ppo.rollout-batch-size 8 --ppo.minibatch-size 4 --ppo.max-new-tokens 8)
    timeout 240 $python -m rlhf_fast.cli pipeline "${stages[@]}"
    timeout 120 $python -m rlhf_fast.cli pipeline "${stages[@]}" --resume --ppo.max-steps 3
    $python -c "import sys; from transformers import AutoModelForCausalLM as M; M.from_pretrained(sys.argv[1]); print('fsdp: saved policy loads without FSDP')" "$fsdp/run/ppo/policy"
} 2>&1 | tee "$out/gpu_check.log"
