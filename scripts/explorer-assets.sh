#!/bin/sh
# Fetch the explorers' browser builds from npm (package-lock.json) and copy the files the app
# serves into .assets/. Run by `make install` and by the Dockerfile's asset stage.
# graphiql 4 is the last line with a UMD bundle usable without a bundler; React 18 the last with UMD.
set -eu
cd "$(dirname "$0")/.."
npm ci --no-audit --no-fund --loglevel=error
rm -rf .assets.tmp
mkdir -p .assets.tmp/swagger-ui .assets.tmp/graphiql
modules=node_modules
cp "$modules/swagger-ui-dist/swagger-ui-bundle.js" "$modules/swagger-ui-dist/swagger-ui.css" \
   "$modules/swagger-ui-dist/favicon-32x32.png" .assets.tmp/swagger-ui/
cp "$modules/graphiql/graphiql.min.js" "$modules/graphiql/graphiql.min.css" \
   "$modules/react/umd/react.production.min.js" "$modules/react-dom/umd/react-dom.production.min.js" \
   .assets.tmp/graphiql/
cp "$modules/@graphiql/plugin-explorer/dist/index.umd.js" .assets.tmp/graphiql/plugin-explorer.umd.js
cp "$modules/@graphiql/plugin-explorer/dist/style.css" .assets.tmp/graphiql/plugin-explorer.css
rm -rf .assets
mv .assets.tmp .assets
