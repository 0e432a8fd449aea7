#!/bin/sh
# Provision a device fully offline: a venv from the wheelhouse, the service user, the unit for the
# device's profile, the first bundle (signature required when --pubkey is given), then start the
# service and wait until it answers.
#
#   sudo firmware/scripts/install-device.sh --profile P --wheelhouse DIR --bundle FILE [--pubkey KEY.pub]
#
# Test flags: --root DIR installs the files under DIR and skips what needs a running systemd
# (sysusers, daemon-reload, enable); --venv DIR uses that venv (default /opt/edge/venv).
set -eu
ROOT=/
VENV=/opt/edge/venv
PUBKEY=
while [ $# -gt 0 ]; do
    case $1 in
        --profile) PROFILE=$2; shift 2 ;;
        --wheelhouse) WHEELHOUSE=$2; shift 2 ;;
        --bundle) BUNDLE=$2; shift 2 ;;
        --pubkey) PUBKEY=$2; shift 2 ;;
        --root) ROOT=$2; shift 2 ;;
        --venv) VENV=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
: "${PROFILE:?--profile is required}" "${WHEELHOUSE:?--wheelhouse is required}" "${BUNDLE:?--bundle is required}"
FIRMWARE=$(cd "$(dirname "$0")/.." && pwd)
ETC=${ROOT%/}/etc
HOME_DIR=${ROOT%/}/var/lib/edge
step() { echo "==> $*"; }

step "venv $VENV from $WHEELHOUSE (no network)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --no-index --find-links "$WHEELHOUSE" edge-llm

step "service user"
install -D -m 644 "$FIRMWARE/systemd/edge.sysusers.conf" "${ROOT%/}/usr/lib/sysusers.d/edge.conf"
[ "$ROOT" != / ] || systemd-sysusers

step "unit for profile $PROFILE"
mkdir -p "$ETC/systemd/system" "$ETC/edge" "$HOME_DIR"
"$VENV/bin/python" "$FIRMWARE/systemd/make_unit.py" --profile "$PROFILE" -o "$ETC/systemd/system/edge.service"
install -m 644 "$FIRMWARE/systemd/edge-install@.service" "$ETC/systemd/system/edge-install@.service"
systemd-analyze verify "$ETC/systemd/system/edge.service"

step "bundle $BUNDLE"
if [ -n "$PUBKEY" ]; then
    install -m 644 "$PUBKEY" "$ETC/edge/bundle.pub"
    EDGE_HOME=$HOME_DIR "$VENV/bin/edge" bundle install "$BUNDLE" --require-signature --pubkey "$ETC/edge/bundle.pub"
else
    EDGE_HOME=$HOME_DIR "$VENV/bin/edge" bundle install "$BUNDLE"
fi

if [ "$ROOT" = / ]; then
    step "start"
    systemctl daemon-reload
    systemctl enable --now edge.service
    "$FIRMWARE/scripts/health.sh" /run/edge/edge.sock
fi
step "done"
