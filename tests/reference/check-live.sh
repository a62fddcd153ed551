#!/usr/bin/env bash
# The reference checks against the libraries themselves, not only against committed numbers
# (ctest: reference_live, label unit):
#  1. make_fixtures.py (transformers), make_wan_fixtures.py and make_vae_unipc_fixtures.py (diffusers) and
#     make_t5_fixtures.py (umT5's tokenizer and text encoder: transformers, sentencepiece, diffusers'
#     WanPipeline), make_generate_fixtures.py (a tiny diffusers-layout repo run by WanPipeline) and
#     make_fp8_fixtures.py (torch's float8 of those tiny models), make_tokenizer_fixtures.py and
#     make_generate_text_fixtures.py (transformers' tokenizers and greedy generate) run again with the committed seeds: their weights and inputs (token ids included) must
#     be bit-identical to tests/reference/fixtures and their outputs equal within 1e-5
#     (compare_fixtures.py), so the committed fixtures are what those libraries compute.
#  2. All run with a fresh seed (LIVE_SEED, drawn and printed unless set): models_test's fixture tests
#     (every Llama-family fixture, the Wan T2V/I2V forward), denoise_test's reference loop, vae_test's
#     decoder checks (fp32, tiled, bf16), sampler_test's UniPC check and text_encoder_test's tokenizer and
#     encoder checks then run against those new models and inputs (PIPESWAP_FIXTURES_DIR), so no fixture
#     is a lucky one.
# Needs the Python of scripts/pyenv ($PIPESWAP_PYTHON): skipped (77) without torch, transformers,
# diffusers, safetensors and sentencepiece. PIPESWAP_BUILD_DIR: the build with models_test, denoise_test,
# vae_test, sampler_test, text_encoder_test, pipeswap.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
py=${PIPESWAP_PYTHON:-python3}
build=${PIPESWAP_BUILD_DIR:-$root/build}
if ! "$py" -c 'import torch, transformers, diffusers, safetensors, sentencepiece' 2>/dev/null; then
  echo "skipped: $py lacks torch, transformers, diffusers, safetensors or sentencepiece (scripts/pyenv makes one; set PIPESWAP_PYTHON)"
  exit 77
fi
seed=${LIVE_SEED:-$(( $(date +%s%N) % 100000 + 1 ))}
tmp=$(mktemp -d /tmp/pipeswap-reference-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
make_all() {  # make_all DIR [--seed-args]
  "$py" "$here/make_fixtures.py" --out "$1" ${2:+--seed $((1234 + 100 * $2))} > "$tmp/make.log" 2>&1 &&
    "$py" "$here/make_wan_fixtures.py" --out "$1" ${2:+--seed $((10 * $2))} >> "$tmp/make.log" 2>&1 &&
    "$py" "$here/make_vae_unipc_fixtures.py" --out "$1" ${2:+--seed $((10 * $2 + 5))} >> "$tmp/make.log" 2>&1 &&
    "$py" "$here/make_t5_fixtures.py" --out "$1" ${2:+--seed $((7 * $2))} >> "$tmp/make.log" 2>&1 &&
    "$py" "$here/make_generate_fixtures.py" --out "$1" ${2:+--seed $((3 * $2))} >> "$tmp/make.log" 2>&1 &&
    "$py" "$here/make_fp8_fixtures.py" --out "$1" >> "$tmp/make.log" 2>&1 &&
    "$py" "$here/make_tokenizer_fixtures.py" --out "$1" >> "$tmp/make.log" 2>&1 &&
    "$py" "$here/make_generate_text_fixtures.py" --out "$1" ${2:+--seed $((11 * $2))} >> "$tmp/make.log" 2>&1 ||
    { cat "$tmp/make.log"; echo "check-live: making the fixtures failed"; exit 1; }
}

echo "== the committed fixtures, made again"
make_all "$tmp/same"
"$py" "$here/compare_fixtures.py" "$root/tests/reference/fixtures" "$tmp/same"

echo "== fresh fixtures (LIVE_SEED=$seed reproduces them)"
make_all "$tmp/fresh" "$seed"
export PIPESWAP_FIXTURES_DIR=$tmp/fresh PIPESWAP_BUILD_DIR=$build PIPESWAP_SOURCE_DIR=$root
"$build/tests/models_test" --gtest_brief=1 \
  --gtest_filter='LlamaFixtures.MatchTransformers:WanFixtures.MatchDiffusers:WanFixtures.BatchMatchesSamplesAlone'
"$build/tests/denoise_test" --gtest_brief=1 --gtest_filter='DenoiseTest.MatchesDiffusersReferenceLoop'
"$build/tests/vae_test" --gtest_brief=1 \
  --gtest_filter='VaeFixture.MatchesDiffusers:VaeFixture.TilingMatchesDiffusersTiling:VaeFixture.Bf16WithinDiffusersOwnBf16Error'
"$build/tests/sampler_test" --gtest_brief=1 --gtest_filter='UniPC.MatchesDiffusers:FlowEuler.MatchesDiffusers'
"$build/tests/text_encoder_test" --gtest_brief=1 \
  --gtest_filter='PromptClean.MatchesDiffusers:T5Tokenizer.MatchesTransformers:T5Tokenizer.RandomStringsMatchTransformers:UMT5.RelativePositionBuckets:UMT5.MatchesTransformersFp32:UMT5.Bf16NearTransformersBf16:UMT5.PromptsToEmbeddings'
"$build/tests/generate_test" --gtest_brief=1 \
  --gtest_filter='GenerateTest.TokenIdsMatchTheWanPipeline:GenerateTest.EmbeddingsAndNoiseMatchTheWanPipeline:GenerateTest.MatchesWanPipelineEndToEnd:GenerateTest.EulerAndNoGuidanceMatch:GenerateTest.PromptBatchMatches'
echo "check-live: ok (LIVE_SEED=$seed)"
