#!/bin/sh
# Print a fresh allq key set as the variables the compose stacks read (docker/README.md):
#
#   docker/gen-env.sh > docker/.env            # uses the allq-server:latest image
#   docker/gen-env.sh IMAGE > docker/.env      # another server image
#   docker/gen-env.sh - < server.log           # the key set a server without keys logged
#
# The keys come from the server image itself (CONFIG_ONLY=true prints a freshly generated
# set and exits), so nothing but Docker is needed on the host. The output holds secret
# keys: keep docker/.env mode 600 and out of version control (docker/.gitignore).
set -eu
source=${1:-${ALLQ_SERVER_IMAGE:-allq-server:latest}}
if [ "$source" = - ]; then
  text=$(cat)
else
  text=$(docker run --rm --network none -e CONFIG_ONLY=true "$source")
fi
# The client's admin token: the images listen on all of the container's interfaces, so the
# client needs one (README "Dashboard"); 24 random bytes, hex.
token=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
printf '%s\n' "$text" | awk -v token="$token" '
  /# allq-server/ { side = "server" }
  /# allq-client/ { side = "client" }
  $1 == "export" {
    split($2, kv, "=")
    name = kv[1]; value = substr($2, length(name) + 2)
    if (side == "server" && name == "A_CURVE_SECRETKEY") out["SERVER_A_CURVE_SECRETKEY"] = value
    if (side == "server" && name == "ALLQ_AUTHORIZED_KEYS") out["ALLQ_AUTHORIZED_KEYS"] = value
    if (side == "client" && name == "A_CURVE_SECRETKEY") out["CLIENT_A_CURVE_SECRETKEY"] = value
    if (side == "client" && name == "A_CURVE_SERVER_PUBLICKEY") out["A_CURVE_SERVER_PUBLICKEY"] = value
  }
  END {
    n = split("SERVER_A_CURVE_SECRETKEY ALLQ_AUTHORIZED_KEYS CLIENT_A_CURVE_SECRETKEY A_CURVE_SERVER_PUBLICKEY", names, " ")
    for (i = 1; i <= n; i++) if (!(names[i] in out)) {
      print "gen-env.sh: no " names[i] " in the suggested key set" > "/dev/stderr"; exit 1
    }
    print "# allq keys for docker/single.yml and docker/federated.yml. Secret: keep this file private."
    print "# allq-server"
    print "SERVER_A_CURVE_SECRETKEY=" out["SERVER_A_CURVE_SECRETKEY"]
    print "ALLQ_AUTHORIZED_KEYS=" out["ALLQ_AUTHORIZED_KEYS"]
    print "# allq-client"
    print "CLIENT_A_CURVE_SECRETKEY=" out["CLIENT_A_CURVE_SECRETKEY"]
    print "A_CURVE_SERVER_PUBLICKEY=" out["A_CURVE_SERVER_PUBLICKEY"]
    print "# the REST API and dashboard: Authorization: Bearer <this>"
    print "ALLQ_ADMIN_TOKEN=" token
  }'
