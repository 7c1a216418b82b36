#!/usr/bin/env bash
# Reproduce the shipped built-in shapes model (impasto/data/shapes) on one GPU, then score it.
#   bash scripts/shapes_gpu.sh [RUNS]        (about 13 minutes on one H100; see docs/shapes.md)
# Stage "vae" (the decoder) and the first UNet segment are independent and run side by side; the second
# UNet segment continues from the first one's EMA weights with a new seed, a lower learning rate and a fresh
# optimizer; the third fine-tunes on noisy captions (--caption-noise: a quarter of the colours, shapes and
# positions named wrongly) so that classifier-free guidance has work to do (the shipped weights ran this
# segment on the 2-core CPU, 800 steps in about 40 minutes). Writes RUNS/{vae,unet1,unet2,unet3}/ and
# RUNS/*.log; the model is RUNS/unet3/model.
set -eu
RUNS=${1:-runs/shapes}
mkdir -p "$RUNS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
train="python3 -m impasto.cli train-shapes --device cuda --pool-size 16384 --checkpoint-every 250 --threads 4"
unet="--stage unet --unet-channels 32,64,128 --batch-size 1024 --ema-decay 0.999"
start=$(date +%s)
$train --seed 0 --out "$RUNS/vae" --stage vae --decoder-steps 13750 --decoder-batch-size 64 >"$RUNS/vae.log" 2>&1 &
$train --seed 0 --out "$RUNS/unet1" $unet --lr 1e-3 --steps 2750 >"$RUNS/unet1.log" 2>&1
wait
$train --seed 1 --out "$RUNS/unet2" $unet --lr 5e-4 --steps 2250 --init-from "$RUNS/unet1/model" \
    >"$RUNS/unet2.log" 2>&1
cp "$RUNS/vae/checkpoints/vae.pt" "$RUNS/unet2/checkpoints/vae.pt"
python3 -m impasto.cli train-shapes --out "$RUNS/unet2" --export-only
$train --seed 2 --out "$RUNS/unet3" --stage unet --unet-channels 32,64,128 --batch-size 256 --ema-decay 0.99 \
    --lr 5e-4 --steps 800 --caption-noise 0.25 --init-from "$RUNS/unet2/model" >"$RUNS/unet3.log" 2>&1
echo "trained in $(( $(date +%s) - start )) s"
python3 benchmarks/shapes_eval.py --model "$RUNS/unet3/model" --device cuda -n 200 --guidance default 3 1 \
    --json "$RUNS/unet3/eval.json"
