#!/bin/sh
# Refuses to let the stack start on weak secrets. docker/compose.yaml runs it as the one-shot `check-secrets`
# service, which every other service waits for; compose itself already refuses a variable that is unset or empty
# (`${VAR:?}`), this catches the rest:
#   - a password or key (a variable of the example file named *_PASSWORD or *_SECRET_KEY) that is missing, still the
#     example's value, shorter than 16 characters, or not URL-safe (it goes into connection URLs and MLflow's ini);
#   - a user name (*_USERNAME) that is missing or holds anything but letters, digits, `.`, `-` and `_` (a `:` would
#     split a basic-auth credential in the wrong place).
# Only variable names are ever printed, never values.
#
#   MLFLOW_ADMIN_PASSWORD=... ./check-secrets.sh docker/.env.example     # exit 0 when every secret is fine
set -eu

MIN_LENGTH=16
example=${1:?usage: check-secrets.sh EXAMPLE_ENV_FILE}
problems=0

refuse() {  # variable reason
    echo "check-secrets: $1 $2" >&2
    problems=$((problems + 1))
}

check_secret() {  # name example-value
    if ! value=$(printenv "$1"); then
        refuse "$1" "is not set (docker/.env)"
    elif [ "$value" = "$2" ]; then
        refuse "$1" "is still the example value of .env.example: replace it, e.g. with \`openssl rand -hex 24\`"
    elif [ "${#value}" -lt "$MIN_LENGTH" ]; then
        refuse "$1" "is shorter than $MIN_LENGTH characters"
    else
        case $value in
            *[!A-Za-z0-9_-]*) refuse "$1" "may only hold letters, digits, - and _ (it goes into URLs)" ;;
        esac
    fi
}

check_username() {  # name
    if ! value=$(printenv "$1") || [ -z "$value" ]; then
        refuse "$1" "is not set (docker/.env)"
        return
    fi
    case $value in
        *[!A-Za-z0-9._-]*) refuse "$1" "may only hold letters, digits, ., - and _" ;;
    esac
}

[ -r "$example" ] || { echo "check-secrets: cannot read $example" >&2; exit 2; }

checked=0
while IFS= read -r line || [ -n "$line" ]; do
    case $line in
        ''|'#'*) continue ;;
    esac
    name=${line%%=*}
    case $name in
        *_PASSWORD|*_SECRET_KEY) check_secret "$name" "${line#*=}" ;;
        *_USERNAME) check_username "$name" ;;
        *) continue ;;
    esac
    checked=$((checked + 1))
done <"$example"

if [ "$checked" -eq 0 ]; then
    echo "check-secrets: $example names no *_PASSWORD, *_SECRET_KEY or *_USERNAME variable" >&2
    exit 2
fi
if [ "$problems" -gt 0 ]; then
    echo "check-secrets: refusing to start: fix docker/.env, then \`docker compose -f docker/compose.yaml up -d\`" >&2
    exit 1
fi
echo "check-secrets: $checked credentials set, none of them an example value"
