#!/usr/bin/env bash
# The MLflow tracking server that stepvideo's stages and Prefect workers record to
# (tests/test_deployments.py starts it exactly like this). Defaults: a sqlite database and an
# artifact folder under ./mlflow-server/, on 127.0.0.1:5000. For a team (README.md here):
#   STEPVIDEO_MLFLOW_BACKEND=postgresql://mlflow:$PGPASSWORD@db.internal:5432/mlflow \
#   STEPVIDEO_MLFLOW_ARTIFACTS_DEST=s3://stepvideo-mlflow/artifacts STEPVIDEO_MLFLOW_HOST=0.0.0.0 \
#   infra/mlflow/serve.sh
# Workers then set MLFLOW_TRACKING_URI=http://HOST:PORT; artifacts go through the server.
set -euo pipefail
here="${STEPVIDEO_MLFLOW_HOME:-$PWD/mlflow-server}"
backend="${STEPVIDEO_MLFLOW_BACKEND:-sqlite:///$here/mlflow.db}"
artifacts="${STEPVIDEO_MLFLOW_ARTIFACTS_DEST:-$here/artifacts}"
case "$backend" in sqlite:///*) mkdir -p "$(dirname "${backend#sqlite:///}")" ;; esac
case "$artifacts" in *://*) ;; *) mkdir -p "$artifacts" ;; esac
exec mlflow server \
  --backend-store-uri "$backend" \
  --artifacts-destination "$artifacts" --serve-artifacts \
  --host "${STEPVIDEO_MLFLOW_HOST:-127.0.0.1}" --port "${STEPVIDEO_MLFLOW_PORT:-5000}" \
  --workers "${STEPVIDEO_MLFLOW_WORKERS:-1}" "$@"
