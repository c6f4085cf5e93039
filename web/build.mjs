// Builds the dashboard into gateway/static/, which the gateway serves at `/`:
//   index.html           the page, referring to the assets with ?v=<content hash> for cache busting
//   favicon.svg
//   assets/app.js        the bundle (minified ESM) and assets/app.js.map (its sourcemap)
//   assets/app.css       our styles and uPlot's, and assets/app.css.map
// The output is deterministic (same sources, same bytes), so `make web-check` can compare it with
// what is committed. Run from anywhere: `node web/build.mjs`.

import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const web = dirname(fileURLToPath(import.meta.url));
const out = join(web, "..", "gateway", "static");
const assets = join(out, "assets");

rmSync(out, { recursive: true, force: true });
mkdirSync(assets, { recursive: true });

const result = await esbuild.build({
  entryPoints: { app: join(web, "src", "main.ts") },
  outdir: assets,
  bundle: true,
  minify: true,
  sourcemap: "linked",
  format: "esm",
  target: ["es2022", "chrome110", "firefox110", "safari16"],
  legalComments: "linked",
  charset: "utf8",
  logLevel: "warning",
  metafile: true,
});
if (result.errors.length) process.exit(1);

// Sourcemaps name their sources relative to the map; a node_modules reached through a symlink would
// put this machine's paths in them, so sources in packages are named as if node_modules were at the
// repository root (where `npm install` puts it), keeping the output the same on every machine.
for (const file of ["app.js.map", "app.css.map"]) {
  const path = join(assets, file);
  const map = JSON.parse(readFileSync(path, "utf8"));
  map.sources = map.sources.map((s) => s.replace(/^(\.\.\/)*.*?\/?node_modules\//, "../../../node_modules/"));
  writeFileSync(path, JSON.stringify(map));
}

const hash = (file) => createHash("sha256").update(readFileSync(join(assets, file))).digest("hex").slice(0, 12);
const html = readFileSync(join(web, "index.html"), "utf8")
  .replace("%APP_JS%", `assets/app.js?v=${hash("app.js")}`)
  .replace("%APP_CSS%", `assets/app.css?v=${hash("app.css")}`);
writeFileSync(join(out, "index.html"), html);
copyFileSync(join(web, "favicon.svg"), join(out, "favicon.svg"));

const sizes = Object.entries(result.metafile.outputs)
  .filter(([file]) => !file.endsWith(".map"))
  .map(([file, o]) => `${file.replace(/^.*gateway\/static\//, "")} ${(o.bytes / 1024).toFixed(1)} KiB`);
console.log(`dashboard built into gateway/static/: ${sizes.join(", ")}`);
