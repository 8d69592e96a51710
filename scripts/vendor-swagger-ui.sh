#!/usr/bin/env bash
# Vendors Swagger UI (the npm package swagger-ui-dist) into assets/swagger-ui/, which the
# gateway serves at /api/v1/docs/ from its own binary (include_bytes!), so the docs page
# works with no internet. Run it only to change the version; the files are committed.
set -euo pipefail
VERSION="${1:-5.32.0}"
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "swagger-ui-dist@$VERSION" >/dev/null && tar xzf swagger-ui-dist-*.tgz)
out=assets/swagger-ui
rm -rf "$out" && mkdir -p "$out"
for f in swagger-ui-bundle.js swagger-ui.css LICENSE NOTICE swagger-ui-bundle.js.LICENSE.txt; do
  cp "$work/package/$f" "$out/"
done
# The source map comment would make browsers ask for a file that is not served.
sed -i '/^\/\/# sourceMappingURL=/d' "$out/swagger-ui-bundle.js"
sed -i 's|/\*# sourceMappingURL=[^*]*\*/||' "$out/swagger-ui.css"
echo "$VERSION" > "$out/VERSION"
ls -l "$out"
