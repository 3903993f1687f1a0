#!/usr/bin/env bash
# `docker compose up --wait` for Compose v1 (docker-compose 1.29 has no --wait):
# wait until every container of the project is healthy (or, without a health
# check, running). Give the same -p/-f/--profile options as to `up`.
#
#   docker-compose -p demo up -d && scripts/compose-wait.sh -p demo --timeout 120
set -euo pipefail
timeout_s=120
args=()
while (( $# )); do
    case $1 in
        --timeout) timeout_s=$2; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
compose=${COMPOSE:-docker-compose}
deadline=$(( SECONDS + timeout_s ))
while true; do
    mapfile -t ids < <($compose "${args[@]}" ps -q)
    waiting=()
    for id in "${ids[@]}"; do
        state=$(docker inspect -f '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")
        read -r name status health <<<"$state"
        if [[ $status != running ]] || [[ $health != healthy && $health != none ]]; then
            waiting+=("${name#/}:$status/$health")
        fi
    done
    if (( ${#ids[@]} > 0 && ${#waiting[@]} == 0 )); then
        echo "compose-wait: ${#ids[@]} containers healthy" >&2
        exit 0
    fi
    if (( SECONDS >= deadline )); then
        echo "compose-wait: not healthy after ${timeout_s}s: ${waiting[*]:-no containers}" >&2
        exit 1
    fi
    sleep 1
done
