#!/usr/bin/env bash
# LocalStack init hook (mounted into /etc/localstack/init/ready.d by docker-compose.yml): create
# the tenant table (CLOUDLOG_TENANTS_TABLE, default cloudlog-tenants) as
# cloudlog_ingest.tenant_table.ensure_tenant_table does: partition key pk (string), pay per
# request, encrypted. Ingest uses it only when CLOUDLOG_TENANTS_TABLE is set.
set -euo pipefail

table=${CLOUDLOG_TENANTS_TABLE:-cloudlog-tenants}

if command -v awslocal >/dev/null 2>&1; then
  dynamodb() { awslocal dynamodb "$@"; }
elif command -v aws >/dev/null 2>&1; then
  dynamodb() { aws --endpoint-url "${LOCALSTACK_ENDPOINT:-http://localhost:4566}" dynamodb "$@"; }
else
  echo "cloudlog tenant table: neither awslocal nor aws is installed in this image" >&2
  exit 1
fi

if dynamodb describe-table --table-name "$table" >/dev/null 2>&1; then
  echo "cloudlog tenant table exists: $table"
  exit 0
fi
dynamodb create-table --table-name "$table" \
  --attribute-definitions AttributeName=pk,AttributeType=S \
  --key-schema AttributeName=pk,KeyType=HASH \
  --billing-mode PAY_PER_REQUEST \
  --sse-specification Enabled=true >/dev/null
dynamodb wait table-exists --table-name "$table"
echo "cloudlog tenant table ready: $table"
