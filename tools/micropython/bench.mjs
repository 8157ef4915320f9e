// Measures the MicroPython harness: instance load, and running test code via runPython(source) versus
// writing a file into the filesystem and importing it, and the per-test cost of firmware/tests/runner.py.
//
//   node tools/micropython/bench.mjs [REPEATS]        (run from the repository root)
//
// One instance for all measurements (this is a benchmark, not a harness; run.mjs is the harness).
import fs from "node:fs";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const repeats = parseInt(process.argv[2] || "15", 10);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
let sink = "";

const t0 = performance.now();
const mp = await loadMicroPython({ stdout: (s) => { sink += s; }, linebuffer: true });
const loadMs = performance.now() - t0;

function copyDir(src, dest) {
  mp.FS.mkdirTree(dest);
  for (const e of fs.readdirSync(src, { withFileTypes: true })) {
    if (e.name.startsWith(".") || e.name === "__pycache__") continue;
    if (e.isDirectory()) copyDir(`${src}/${e.name}`, `${dest}/${e.name}`);
    else mp.FS.writeFile(`${dest}/${e.name}`, fs.readFileSync(`${src}/${e.name}`));
  }
}
copyDir("firmware", "/firmware");

function testModule(n) {
  let s = "";
  for (let i = 0; i < n; i++) s += `def test_${i}():\n    assert ${i} + 1 == ${i + 1}\n\n`;
  return s;
}

let uniq = 0;
function time(fn) {
  const xs = [];
  for (let r = 0; r < repeats; r++) {
    const a = performance.now();
    fn();
    xs.push(performance.now() - a);
  }
  return median(xs);
}

const rows = [];
for (const n of [1, 10, 100]) {
  const src = testModule(n);
  // (a) runPython(source): compile + execute the module's code in __main__'s globals
  const viaRun = time(() => mp.runPython(src));
  // (b) write /benchmods/m<k>.py, then runPython("import m<k>"): FS write + import machinery + compile
  mp.FS.mkdirTree("/benchmods");
  mp.runPython("import sys\nif '/benchmods' not in sys.path: sys.path.append('/benchmods')");
  const viaImport = time(() => {
    const name = `m${uniq++}`;
    mp.FS.writeFile(`/benchmods/${name}.py`, src);
    mp.runPython(`import ${name}`);
  });
  // (c) the runner on an imported module: collect + call every test (output discarded)
  const name = `m${uniq++}`;
  mp.FS.writeFile(`/benchmods/${name}.py`, src);
  mp.runPython(`import ${name}\nfrom firmware.tests import runner as _r`);
  const viaRunner = time(() => mp.runPython(
    `_res = _r.Result()\nfor _n, _f in _r.collect(${name}):\n    _r.run_test(_n, _f, _res, lambda s: None)\n` +
    `assert _res.passed == ${n}`));
  rows.push({ tests: n, bytes: src.length, runPython_ms: viaRun, write_import_ms: viaImport, runner_ms: viaRunner });
}
// a bare runPython round trip
const emptyRun = time(() => mp.runPython("pass"));

console.log(`loadMicroPython: ${loadMs.toFixed(1)} ms; runPython("pass"): ${emptyRun.toFixed(3)} ms; ` +
  `medians of ${repeats}`);
console.log("tests  source B  runPython(src) ms  writeFile+import ms  runner collect+run ms  runner per test ms");
for (const r of rows) {
  console.log(`${String(r.tests).padStart(5)}  ${String(r.bytes).padStart(8)}  ${r.runPython_ms.toFixed(2).padStart(17)}  ` +
    `${r.write_import_ms.toFixed(2).padStart(19)}  ${r.runner_ms.toFixed(2).padStart(21)}  ` +
    `${(r.runner_ms / r.tests).toFixed(3).padStart(18)}`);
}
