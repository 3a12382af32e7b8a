#!/bin/bash
# Submit a whole bids-ketamine analysis to Slurm: one array task per participant, then the
# group level, which starts only when every participant task has succeeded
# (--dependency=afterok:<array job id>).
#
#   scripts/slurm/submit_all.sh BIDS_DIR OUTPUT_DIR [-- options for both levels]
#
# Environment (all optional):
#   BK_CMD                      how to run bids-ketamine (default: bids-ketamine), e.g.
#                               "apptainer run --cleanenv -B /scratch bids_ketamine.sif"
#   BK_WORK_ROOT                parent of the work directories (default: OUTPUT_DIR/../work)
#   BK_PARTICIPANT_SBATCH_ARGS  sbatch options of the array, e.g. "--cpus-per-task=4 --mem=8G"
#   BK_GROUP_SBATCH_ARGS        sbatch options of the group job
#   BK_PARTICIPANT_ARGS         bids-ketamine options for the participant level only
#   BK_GROUP_ARGS               bids-ketamine options for the group level only
#   BK_MAX_PARALLEL             run at most this many participants at once (array %N)
#
# Prints the two job ids ("participant_array=<id>" and "group=<id>").
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [[ $# -lt 2 ]]; then
    sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
if [[ ! -d "$1" ]]; then
    echo "BIDS_DIR '$1' is not a folder" >&2
    exit 2
fi
bids_dir=$(cd "$1" && pwd)
mkdir -p "$2"
output_dir=$(cd "$2" && pwd)
shift 2
[[ "${1:-}" == "--" ]] && shift
common_args=("$@")

n_participants=$(bash "$here/participant_array.sbatch" --list "$bids_dir" | wc -l)
if (( n_participants == 0 )); then
    echo "no participants in $bids_dir (participants.tsv or sub-* folders)" >&2
    exit 2
fi

work_root=${BK_WORK_ROOT:-$(dirname "$output_dir")/work}
log_dir="$work_root/logs"
mkdir -p "$log_dir"
export BK_WORK_ROOT="$work_root"   # sbatch passes the environment to the jobs

array_spec="1-$n_participants"
[[ -n "${BK_MAX_PARALLEL:-}" ]] && array_spec+="%$BK_MAX_PARALLEL"

read -r -a participant_sbatch <<< "${BK_PARTICIPANT_SBATCH_ARGS:-}"
read -r -a group_sbatch <<< "${BK_GROUP_SBATCH_ARGS:-}"
read -r -a participant_args <<< "${BK_PARTICIPANT_ARGS:-}"
read -r -a group_args <<< "${BK_GROUP_ARGS:-}"

array_job=$(sbatch --parsable --array="$array_spec" \
    --output="$log_dir/bk-participant-%A_%a.out" "${participant_sbatch[@]}" \
    "$here/participant_array.sbatch" "$bids_dir" "$output_dir" \
    "${common_args[@]}" "${participant_args[@]}")
array_job=${array_job%%;*}   # "id;cluster" on federated clusters

group_job=$(sbatch --parsable --dependency="afterok:$array_job" \
    --output="$log_dir/bk-group-%j.out" "${group_sbatch[@]}" \
    "$here/group.sbatch" "$bids_dir" "$output_dir" \
    "${common_args[@]}" "${group_args[@]}")
group_job=${group_job%%;*}

echo "participant_array=$array_job"
echo "group=$group_job"
echo "$n_participants participants; logs in $log_dir" >&2
