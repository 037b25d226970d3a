#!/usr/bin/env bash
# The shipped ltc-mf ensemble: 9 seeds of the multi-fidelity model (experiment=mf) on every crystal, each then
# fine-tuned on the measured values at the measured fidelity (the mfft stage of run_cv.sh), with the settings of the
# grouped CV that calibrated its intervals (15 epochs, AFLOW subsampled to 300 crystals, L1 loss, chosen on MAE log10).
# Usage: experiments/ltc-mf/train_shipped.sh LOG_DIR   (resumable; prints each stage's wall time, the benchmark)
# CROSS_EVAL="[dataset1,dataset2,mix]" also scores every member on those datasets' validation splits of its seed, at
# their fidelity: the paper-protocol table (paraisite table LOG_DIR/ship).
set -euo pipefail
LOG_DIR=${1:?usage: train_shipped.sh LOG_DIR}
SEEDS=${SEEDS:-[1,2,3,4,5,6,7,8,9]}
common=(-m "paths.log_dir=$LOG_DIR" group=ship "seeds=$SEEDS" threads=${THREADS:-1} hydra/launcher=basic logger=csv
  callbacks.progress_bar=null "cross_eval=${CROSS_EVAL:-[]}" max_per_source=300 trainer.max_epochs=15)
start=$(date +%s)
paraisite-train "${common[@]}" experiment=mf
middle=$(date +%s)
# shellcheck disable=SC2016
paraisite-train "${common[@]}" experiment=step4 task_name=mf_ft 'data.fidelities=[agl,ab-initio,measured]' \
  'init_from="${paths.log_dir}/${group}/${run_path:mf,MF,${seed}}"' model.loss=l1 select_metric=mae_log10
end=$(date +%s)
echo "wall time: mf $((middle - start)) s, mf_ft $((end - middle)) s, total $((end - start)) s"
