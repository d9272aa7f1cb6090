// Checks of the Kubernetes manifests, images and deploy script, run by
// tests/test_e2e_manifests.c:  node tests/k8s/check.mjs CHECK
//
// Every check renders the manifests with kubectl's built-in kustomize and
// tests the rendered objects against the Kubernetes schemas (npm
// kubernetes-models) and against what the project's binaries, Makefile and
// Dockerfiles really do. Prints one line per finding; exit 0 = pass,
// 1 = a finding, 3 = a missing tool.
import { createRequire } from "node:module";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(here, "..", "..");
const NS = "ebpf-system";

let YAML;
try {
    YAML = require("yaml");
    require.resolve("kubernetes-models/apps/v1/DaemonSet");
} catch {
    console.error(
        "missing npm packages in tests/k8s: run scripts/deps-k8s.sh (part of make deps)",
    );
    process.exit(3);
}

const failures = [];
function fail(msg) {
    failures.push(msg);
    console.log(`FAIL: ${msg}`);
}
function ok(msg) {
    console.log(`ok: ${msg}`);
}
function expect(cond, msg) {
    if (cond) ok(msg);
    else fail(msg);
    return cond;
}

function run(cmd, args, opts = {}) {
    const r = spawnSync(cmd, args, { cwd: ROOT, encoding: "utf8", ...opts });
    if (r.error && r.error.code === "ENOENT") {
        console.error(`${cmd} not found in PATH`);
        process.exit(3);
    }
    return r;
}

// ---------------------------------------------------------------- rendering

function parseDocs(text) {
    return YAML.parseAllDocuments(text)
        .map((d) => d.toJS())
        .filter((o) => o && typeof o === "object");
}

function kustomize(dir) {
    const r = run("kubectl", ["kustomize", dir]);
    if (r.status !== 0) throw new Error(`kubectl kustomize ${dir} failed: ${r.stderr.trim()}`);
    return parseDocs(r.stdout);
}

function deployRender(args) {
    const r = run(path.join(ROOT, "scripts/deploy.sh"), ["render", ...args]);
    if (r.status !== 0)
        throw new Error(`deploy.sh render ${args.join(" ")} failed: ${r.stderr.trim()}`);
    return parseDocs(r.stdout);
}

const find = (objs, kind, name) => objs.find((o) => o.kind === kind && o.metadata?.name === name);
const workloads = (objs) =>
    objs.filter((o) => ["DaemonSet", "Deployment", "StatefulSet"].includes(o.kind));
const containersOf = (w) => [
    ...(w.spec.template.spec.initContainers || []),
    ...w.spec.template.spec.containers,
];

// The project's own workloads and the binary each runs.
const OWN = [
    { kind: "DaemonSet", name: "ebpf-monitor", bin: "ebpf-agent", dockerfile: "images/agent/Dockerfile" },
    {
        kind: "Deployment",
        name: "ebpf-aggregator",
        bin: "ebpf-aggregator",
        dockerfile: "images/aggregator/Dockerfile",
    },
];

// ------------------------------------------------------------------ schemas

// Field names per type, read from kubernetes-models' TypeScript declarations,
// so that misspelt fields (which the JSON schemas allow) are caught too.
const dtsCache = new Map();
function dtsFields(file) {
    if (dtsCache.has(file)) return dtsCache.get(file);
    let info = null;
    if (fs.existsSync(file)) {
        const text = fs.readFileSync(file, "utf8");
        const imports = {};
        for (const m of text.matchAll(/^import \{ (\w+) \} from "([^"]+)";$/gm)) imports[m[1]] = m[2];
        const body = text.match(/^export interface \w+[^{]*\{\n([\s\S]*?)^\}/m);
        if (body) {
            const fields = {};
            for (const m of body[1].matchAll(/^ {4}"([^"]+)"\??: (.*)$/gm)) {
                let t = m[2].replace(/;$/, "");
                const arr = t.match(/^Array<(\w+)>$/);
                const ref = (arr ? arr[1] : t).trim();
                let target = null;
                if (imports[ref]) {
                    const spec = imports[ref];
                    target = spec.startsWith(".")
                        ? path.resolve(path.dirname(file), spec + ".d.ts")
                        : resolveDts(spec);
                }
                fields[m[1]] = { target, array: !!arr };
            }
            info = fields;
        }
    }
    dtsCache.set(file, info);
    return info;
}

function resolveDts(spec) {
    const parts = spec.split("/");
    const pkg = spec.startsWith("@") ? parts.slice(0, 2).join("/") : parts[0];
    const rest = parts.slice(spec.startsWith("@") ? 2 : 1).join("/");
    const pkgDir = path.dirname(require.resolve(`${pkg}/package.json`));
    return path.join(pkgDir, rest + ".d.ts");
}

function unknownFields(data, dtsFile, at, out) {
    const fields = dtsFields(dtsFile);
    if (!fields || !data || typeof data !== "object" || Array.isArray(data)) return;
    for (const [k, v] of Object.entries(data)) {
        const f = fields[k];
        if (!f) {
            out.push(`${at}.${k}: unknown field`);
            continue;
        }
        if (!f.target) continue;
        if (f.array && Array.isArray(v)) v.forEach((e, i) => unknownFields(e, f.target, `${at}.${k}[${i}]`, out));
        else unknownFields(v, f.target, `${at}.${k}`, out);
    }
}

function modelPath(apiVersion, kind) {
    const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : [null, apiVersion];
    return group ? `kubernetes-models/${group}/${version}/${kind}` : `kubernetes-models/${version}/${kind}`;
}

// Returns the problems of one object: schema violations and unknown fields.
function schemaProblems(obj) {
    const id = `${obj.kind}/${obj.metadata?.name}`;
    if (!obj.apiVersion || !obj.kind) return [`${id}: no apiVersion/kind`];
    let Model;
    const mp = modelPath(obj.apiVersion, obj.kind);
    try {
        Model = require(mp)[obj.kind];
    } catch {
        return [`${id}: ${obj.apiVersion} ${obj.kind} is not a Kubernetes API type`];
    }
    const problems = [];
    try {
        new Model(obj).validate();
    } catch (e) {
        problems.push(`${id}: ${e.message}`);
    }
    unknownFields(obj, require.resolve(mp).replace(/\.js$/, ".d.ts"), id, problems);
    return problems;
}

// ------------------------------------------------------------------ helpers

function helpKeys(bin) {
    const r = run(path.join(ROOT, "bin", bin), ["--help"]);
    if (r.status !== 0) throw new Error(`bin/${bin} --help failed (build first: make)`);
    const keys = {};
    // "env KEY; default: VALUE", or "env KEY" alone when the default is found at run time.
    for (const m of r.stdout.matchAll(/env (\w+)(?:; default: (.*))?$/gm)) keys[m[1]] = m[2] ?? "";
    return keys;
}

function configYaml(objs) {
    const cm = find(objs, "ConfigMap", "ebpf-monitor-config");
    if (!cm || !cm.data?.["config.yaml"]) throw new Error("ConfigMap ebpf-monitor-config has no config.yaml");
    return cm.data["config.yaml"];
}

function tmpFile(name, text) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ebpf-manifests-"));
    const f = path.join(dir, name);
    fs.writeFileSync(f, text);
    return f;
}

// A stand-in for the value of key in Secret name: what scripts/deploy.sh would
// create (letters and digits, starting with a letter), the same for the same
// Secret everywhere.
function secretValue(name, key) {
    let h = 0;
    for (const ch of `${name}/${key}`) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
    return `s${h.toString(36)}x${name.replace(/[^A-Za-z0-9]/g, "")}`;
}

// The environment a container would get: literal values as written (with
// $(VAR) references to earlier variables expanded, as the kubelet does),
// downward API values as the kubelet would fill them in, Secret values as
// stand-ins (secretValue).
function containerEnv(w, c) {
    const env = {};
    for (const e of c.env || []) {
        if (e.value !== undefined)
            env[e.name] = String(e.value).replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, v) => (v in env ? env[v] : m));
        else if (e.valueFrom?.secretKeyRef) env[e.name] = secretValue(e.valueFrom.secretKeyRef.name, e.valueFrom.secretKeyRef.key);
        else if (e.valueFrom?.fieldRef) {
            const fp = e.valueFrom.fieldRef.fieldPath;
            env[e.name] =
                fp === "spec.nodeName"
                    ? "worker-1.example.internal"
                    : fp === "metadata.name"
                      ? `${w.metadata.name}-x7k2p`
                      : fp === "metadata.namespace"
                        ? w.metadata.namespace
                        : "value";
        } else env[e.name] = "";
    }
    return env;
}

function checkConfig(bin, file, env) {
    const clean = Object.fromEntries(
        Object.entries(process.env).filter(([k]) => !/^(NATS_|BATCH_|FLUSH_|LISTEN_|CONFIG_FILE)/.test(k)),
    );
    return run(path.join(ROOT, "bin", bin), ["--config", file, "--check-config"], {
        env: { ...clean, ...env },
    });
}

function dockerfile(rel) {
    const text = fs.readFileSync(path.join(ROOT, rel), "utf8").replace(/\\\n/g, " ");
    const stages = [];
    for (const line of text.split("\n")) {
        const l = line.trim();
        if (!l || l.startsWith("#")) continue;
        const [instr, ...rest] = l.split(/\s+/);
        const arg = rest.join(" ");
        if (instr.toUpperCase() === "FROM") {
            const m = arg.match(/^(\S+)(?:\s+AS\s+(\S+))?/i);
            stages.push({ image: m[1], name: m[2], lines: [] });
        } else if (stages.length) stages[stages.length - 1].lines.push({ instr: instr.toUpperCase(), arg });
    }
    return stages;
}

function aptPackages(stage) {
    const pkgs = [];
    for (const { instr, arg } of stage.lines) {
        if (instr !== "RUN") continue;
        for (const cmd of arg.split(/&&|;/)) {
            const m = cmd.trim().match(/^apt-get\s+install\s+(.*)$/);
            if (m) pkgs.push(...m[1].split(/\s+/).filter((w) => w && !w.startsWith("-")));
        }
    }
    return pkgs;
}

// Shared libraries of a binary -> the Debian packages that ship them. One
// dpkg -S for all of them (it is slow per call); with merged /usr, dpkg may
// know a library under /lib or /usr/lib, so every spelling is asked.
// The packages of the libraries the binary itself links (DT_NEEDED); what
// those libraries need in turn arrives through their packages' dependencies.
function libraryPackages(binPath) {
    const r = run("ldd", [binPath]);
    if (r.status !== 0) throw new Error(`ldd ${binPath} failed`);
    const dyn = run("readelf", ["-d", binPath]);
    if (dyn.status !== 0) throw new Error(`readelf -d ${binPath} failed`);
    const needed = new Set([...dyn.stdout.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]));
    const libs = [];
    for (const line of r.stdout.split("\n")) {
        const m = line.match(/^\s*(\S+)\s+=>\s+(\S+)/) || line.match(/^\s*(\/\S+)\s+\(/);
        if (!m) continue;
        if (m[2] && !needed.has(m[1])) continue;
        const file = m[2] || m[1];
        const real = fs.realpathSync(file);
        const names = [...new Set([file, real, real.replace(/^\/usr\//, "/"), file.replace(/^\/lib/, "/usr/lib")])];
        libs.push({ lib: path.basename(file), names });
    }
    const owner = {};
    const d = run("dpkg", ["-S", ...libs.flatMap((l) => l.names)]);
    for (const line of d.stdout.split("\n")) {
        const m = line.match(/^([^:,]+)(?::[^:]+)?: (\S+)$/);
        if (m) owner[m[2]] = m[1];
    }
    return libs.map(({ lib, names }) => ({ lib, pkg: names.map((n) => owner[n]).find(Boolean) || null }));
}

function freePort() {
    return new Promise((resolve, reject) => {
        const s = net.createServer();
        s.listen(0, "127.0.0.1", () => {
            const { port } = s.address();
            s.close(() => resolve(port));
        });
        s.on("error", reject);
    });
}

async function httpStatus(url, token) {
    try {
        const headers = token ? { Authorization: `Bearer ${token}` } : {};
        const r = await fetch(url, { headers, signal: AbortSignal.timeout(2000) });
        return { status: r.status, body: await r.text() };
    } catch {
        return { status: 0, body: "" };
    }
}

// Capability bits, to keep a requested set within this process's bounding set.
const CAP_BITS = { SYS_ADMIN: 21, SYS_PTRACE: 19, SYS_RESOURCE: 24, DAC_READ_SEARCH: 2, NET_ADMIN: 12, SYSLOG: 34, PERFMON: 38, BPF: 39, CHECKPOINT_RESTORE: 40 };
function boundingSet() {
    const m = fs.readFileSync("/proc/self/status", "utf8").match(/^CapBnd:\s*([0-9a-f]+)/m);
    return BigInt("0x" + m[1]);
}

// ------------------------------------------------------------------- checks

const checks = {};

checks.render = () => {
    const objs = kustomize("manifests");
    ok(`kubectl kustomize manifests: ${objs.length} objects`);
    const kustom = YAML.parse(fs.readFileSync(path.join(ROOT, "manifests/kustomization.yaml"), "utf8"));
    const seed = ["namespace.yaml", "rbac.yaml", "configmap.yaml", "services.yaml", "aggregator-deployment.yaml", "daemonset.yaml"];
    const order = kustom.resources.filter((r) => seed.includes(r));
    expect(JSON.stringify(order) === JSON.stringify(seed), `kustomization lists the seed's files in order: ${order.join(", ")}`);
    for (const f of seed) expect(fs.existsSync(path.join(ROOT, "manifests", f)), `manifests/${f} exists`);
    expect(find(objs, "Namespace", NS), `Namespace ${NS}`);
    for (const o of objs) {
        if (["Namespace", "ClusterRole", "ClusterRoleBinding"].includes(o.kind)) continue;
        if (o.metadata.namespace !== NS) fail(`${o.kind}/${o.metadata.name} is in namespace ${o.metadata.namespace}, not ${NS}`);
    }
    const ds = find(objs, "DaemonSet", "ebpf-monitor");
    expect(ds && ds.spec.template.metadata.labels.app === "ebpf-monitor" && ds.spec.selector.matchLabels.app === "ebpf-monitor", "DaemonSet ebpf-monitor, label app=ebpf-monitor");
    const dep = find(objs, "Deployment", "ebpf-aggregator");
    expect(dep && dep.spec.template.metadata.labels.app === "ebpf-aggregator" && dep.spec.replicas === 2, "Deployment ebpf-aggregator, label app=ebpf-aggregator, 2 replicas");
    const anti = dep?.spec.template.spec.affinity?.podAntiAffinity;
    const terms = [...(anti?.preferredDuringSchedulingIgnoredDuringExecution || []).map((t) => t.podAffinityTerm), ...(anti?.requiredDuringSchedulingIgnoredDuringExecution || [])];
    expect(terms.some((t) => t.topologyKey === "kubernetes.io/hostname" && t.labelSelector?.matchLabels?.app === "ebpf-aggregator"), "aggregator replicas have pod anti-affinity by hostname");
    const svc = find(objs, "Service", "ebpf-aggregator");
    expect(svc && svc.spec.selector.app === "ebpf-aggregator" && svc.spec.ports.some((p) => p.port === 8081), "Service ebpf-aggregator on 8081");
    const pdb = objs.find((o) => o.kind === "PodDisruptionBudget" && o.spec.selector?.matchLabels?.app === "ebpf-aggregator");
    expect(pdb && (pdb.spec.minAvailable >= 1 || pdb.spec.maxUnavailable !== undefined), "PodDisruptionBudget for the aggregator");
    const nats = find(objs, "StatefulSet", "nats") || find(objs, "Deployment", "nats");
    expect(nats && /^nats:/.test(nats.spec.template.spec.containers[0].image), "NATS workload (official nats image)");
    const natsSvc = find(objs, "Service", "nats");
    expect(natsSvc && natsSvc.spec.ports.some((p) => p.port === 4222), "Service nats on 4222");
    const natsConf = find(objs, "ConfigMap", "nats-config")?.data?.["nats.conf"] || "";
    expect(/jetstream\s*\{/.test(natsConf), "NATS config enables JetStream");
    // The NATS config must be one nats-server accepts (nats-server -t), with
    // the environment the StatefulSet gives it.
    const t = natsConfigTest(objs);
    expect(t.status === 0, `nats-server -t accepts the NATS config ${t.status === 0 ? "" : (t.stdout + t.stderr).trim()}`);
    const url = YAML.parse(configYaml(objs)).NATS_URL || "";
    const urls = url.split(",").map((u) => u.trim());
    for (const u of urls) expect(natsUrlTarget(objs, u), `NATS_URL entry ${u} names the NATS Service or one NATS server, and the client port`);
    expect(urls.some((u) => natsUrlTarget(objs, u) === "service"), `NATS_URL ${url} includes the NATS Service`);
};

// Writes the rendered NATS ConfigMap's files to a directory and runs
// nats-server -t on nats.conf with the StatefulSet container's environment.
function natsConfigTest(objs) {
    const cm = find(objs, "ConfigMap", "nats-config");
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ebpf-nats-conf-"));
    for (const [k, v] of Object.entries(cm?.data || {})) fs.writeFileSync(path.join(dir, k), k === "nats.conf" ? v.replace(/store_dir:\s*\S+/, `store_dir: ${dir}/js`) : v);
    const sts = find(objs, "StatefulSet", "nats");
    const env = { ...process.env, ...containerEnv(sts, sts.spec.template.spec.containers[0]), POD_NAME: "nats-0" };
    const r = run("nats-server", ["-c", path.join(dir, "nats.conf"), "-t"], { env });
    fs.rmSync(dir, { recursive: true, force: true });
    return r;
}

// "service" when u is the NATS Service's client port, "server" when it is
// one server of the StatefulSet by its headless DNS name, else null.
function natsUrlTarget(objs, u) {
    const m = u.match(/^nats:\/\/([^:/@]+):(\d+)$/);
    if (!m) return null;
    const sts = find(objs, "StatefulSet", "nats");
    const clientPort = (svc) => svc?.spec.ports.some((p) => p.port === Number(m[2]) && p.targetPort === "client");
    if (find(objs, "Service", m[1]) && m[1] === "nats") return clientPort(find(objs, "Service", "nats")) ? "service" : null;
    const pod = m[1].match(/^([a-z0-9-]+)-(\d+)\.([a-z0-9-]+)$/);
    if (pod && sts && pod[1] === sts.metadata.name && Number(pod[2]) < sts.spec.replicas && pod[3] === sts.spec.serviceName)
        return clientPort(find(objs, "Service", pod[3])) ? "server" : null;
    return null;
}

// ------------------------------------------------------------- NATS config

// Parses the subset of the nats-server configuration language the manifests
// use: maps ({} or top level), arrays, key: value / key = value / key {},
// quoted and bare strings ($VAR stays "$VAR"), # and // comments, and
// `include file` (read from files[file]).
function parseNatsConf(text, files = {}) {
    let i = 0;
    const err = (m) => {
        throw new Error(`NATS config: ${m} at offset ${i}: ${JSON.stringify(text.slice(i, i + 30))}`);
    };
    const skip = (nl = true) => {
        for (;;) {
            const c = text[i];
            if (c === "#" || (c === "/" && text[i + 1] === "/")) while (i < text.length && text[i] !== "\n") i++;
            else if (c === " " || c === "\t" || c === "\r" || (nl && (c === "\n" || c === "," || c === ";"))) i++;
            else return;
        }
    };
    const bare = () => {
        const s = i;
        while (i < text.length && !/[\s,\]}#;]/.test(text[i])) i++;
        return text.slice(s, i);
    };
    const value = () => {
        skip(false);
        const c = text[i];
        if (c === "{") {
            i++;
            const m = map("}");
            i++;
            return m;
        }
        if (c === "[") {
            i++;
            const a = [];
            for (;;) {
                skip();
                if (text[i] === "]") {
                    i++;
                    return a;
                }
                if (i >= text.length) err("unterminated array");
                a.push(value());
            }
        }
        if (c === '"' || c === "'") {
            const e = text.indexOf(c, i + 1);
            if (e < 0) err("unterminated string");
            const v = text.slice(i + 1, e);
            i = e + 1;
            return v;
        }
        return bare();
    };
    const map = (end) => {
        const m = {};
        for (;;) {
            skip();
            if (i >= text.length || text[i] === end) {
                if (end && i >= text.length) err("unterminated map");
                return m;
            }
            const key = text[i] === '"' ? value() : (() => {
                const s = i;
                while (i < text.length && !/[\s:={]/.test(text[i])) i++;
                return text.slice(s, i);
            })();
            skip(false);
            if (key === "include") {
                const f = value().replace(/^\.\//, "");
                if (!(f in files)) err(`include ${f}: not in the ConfigMap`);
                Object.assign(m, parseNatsConf(files[f], files));
                continue;
            }
            if (text[i] === ":" || text[i] === "=") i++;
            m[key] = value();
        }
    };
    return map(null);
}

// The NATS config as deployed: nats.conf with its includes, from the ConfigMap.
function natsConf(objs) {
    const data = find(objs, "ConfigMap", "nats-config")?.data;
    if (!data?.["nats.conf"]) throw new Error("ConfigMap nats-config has no nats.conf");
    return parseNatsConf(data["nats.conf"], data);
}

const asList = (v) => (v === undefined ? [] : Array.isArray(v) ? v : [v]);
const sameSet = (a, b) => JSON.stringify([...new Set(a)].sort()) === JSON.stringify([...new Set(b)].sort());
const envOf = (c) => Object.fromEntries((c.env || []).map((e) => [e.name, e]));

checks.schema = () => {
    const variants = {
        "manifests": kustomize("manifests"),
        "deploy.sh render --privileged --namespace mon --registry r.example/x --tag v1": deployRender(["--privileged", "--namespace", "mon", "--registry", "r.example/x", "--tag", "v1"]),
    };
    for (const [name, objs] of Object.entries(variants)) {
        let bad = 0;
        for (const o of objs) {
            const p = schemaProblems(o);
            p.forEach(fail);
            bad += p.length;
        }
        expect(bad === 0, `${name}: all ${objs.length} objects valid against the Kubernetes schemas`);
    }
};

checks.images = () => {
    const objs = kustomize("manifests");
    for (const [args, registry, tag] of [[[], "ghcr.io/ebpf-monitor", "latest"], [["REGISTRY=reg.example:5000/team", "TAG=v9.1"], "reg.example:5000/team", "v9.1"]]) {
        const r = run("make", ["-s", "-n", "--no-print-directory", "docker-build", ...args]);
        if (!expect(r.status === 0, `make -n docker-build ${args.join(" ")}`)) {
            console.log(r.stderr);
            continue;
        }
        const built = {};
        for (const line of r.stdout.split("\n")) {
            if (!/\bdocker\b.*\bbuild\b/.test(line)) continue;
            const f = line.match(/-f\s+(\S+)/)?.[1];
            const t = line.match(/-t\s+(\S+)/)?.[1];
            if (f && t) built[f] = t;
        }
        const rendered = args.length ? deployRender(["--registry", registry, "--tag", tag]) : objs;
        for (const own of OWN) {
            const w = find(rendered, own.kind, own.name);
            const image = w?.spec.template.spec.containers[0].image;
            expect(built[own.dockerfile] && image === built[own.dockerfile], `${own.kind}/${own.name} runs ${image}, which make docker-build builds from ${own.dockerfile} (${built[own.dockerfile]})`);
        }
        expect(built["images/agent/Dockerfile"] === `${registry}/ebpf-monitor:${tag}` && built["images/aggregator/Dockerfile"] === `${registry}/ebpf-aggregator:${tag}`, `image names are REGISTRY/ebpf-monitor:TAG and REGISTRY/ebpf-aggregator:TAG for ${registry} ${tag}`);
    }
};

checks.resources = () => {
    const objs = kustomize("manifests");
    const seed = {
        "DaemonSet/ebpf-monitor": { requests: { cpu: "100m", memory: "128Mi" }, limits: { cpu: "500m", memory: "512Mi" } },
        "Deployment/ebpf-aggregator": { requests: { cpu: "200m", memory: "256Mi" }, limits: { cpu: "1000m", memory: "1Gi" } },
    };
    for (const w of workloads(objs)) {
        for (const c of containersOf(w)) {
            const id = `${w.kind}/${w.metadata.name}/${c.name}`;
            const r = c.resources || {};
            expect(r.requests?.cpu && r.requests?.memory && r.limits?.cpu && r.limits?.memory, `${id} has cpu and memory requests and limits`);
            const want = seed[`${w.kind}/${w.metadata.name}`];
            const same = (a, b) => ["requests", "limits"].every((k) => ["cpu", "memory"].every((q) => String(a[k]?.[q]) === b[k][q]));
            if (want) expect(same(r, want), `${id} has the seed's resources ${JSON.stringify(want)}`);
            expect(c.livenessProbe && c.readinessProbe, `${id} has liveness and readiness probes`);
        }
    }
};

checks.config = () => {
    const objs = kustomize("manifests");
    const text = configYaml(objs);
    const file = tmpFile("config.yaml", text);
    const keys = Object.keys(YAML.parse(text) || {});
    const known = { ...helpKeys("ebpf-agent"), ...helpKeys("ebpf-aggregator") };
    for (const k of keys) expect(k in known, `config.yaml key ${k} is one the binaries accept`);
    for (const own of OWN) {
        const r = checkConfig(own.bin, file, {});
        expect(r.status === 0, `bin/${own.bin} --config <rendered config.yaml> --check-config: ${(r.stdout + r.stderr).trim()}`);
        // Each binary must actually be pointed at the mounted file.
        const w = find(objs, own.kind, own.name);
        const c = w.spec.template.spec.containers[0];
        const args = [...(c.command || []), ...(c.args || [])];
        const i = args.indexOf("--config");
        const cfg = i >= 0 ? args[i + 1] : null;
        const mount = (c.volumeMounts || []).find((m) => cfg && cfg.startsWith(m.mountPath.replace(/\/?$/, "/")));
        const vol = mount && w.spec.template.spec.volumes.find((v) => v.name === mount.name);
        const key = cfg && mount ? cfg.slice(mount.mountPath.replace(/\/?$/, "/").length) : null;
        expect(vol?.configMap?.name === "ebpf-monitor-config" && key === "config.yaml", `${own.kind}/${own.name} runs with --config ${cfg}, the mounted ConfigMap ebpf-monitor-config's config.yaml`);
    }
    // The check is not vacuous: a bad value and an unknown key are refused.
    const bad = tmpFile("config.yaml", text + "\nBATCH_SIZE: 0\n");
    expect(checkConfig("ebpf-agent", bad, {}).status === 2, "--check-config refuses BATCH_SIZE: 0 (exit 2)");
    const unknown = tmpFile("config.yaml", text + "\nNO_SUCH_KEY: 1\n");
    expect(checkConfig("ebpf-aggregator", unknown, {}).status === 2, "--check-config refuses an unknown key (exit 2)");
};

checks.env = () => {
    const objs = kustomize("manifests");
    const file = tmpFile("config.yaml", configYaml(objs));
    for (const own of OWN) {
        const w = find(objs, own.kind, own.name);
        const c = w.spec.template.spec.containers[0];
        const keys = helpKeys(own.bin);
        for (const e of c.env || []) expect(e.name in keys, `${own.kind}/${own.name} env ${e.name} is a key of ${own.bin}`);
        const env = containerEnv(w, c);
        const r = checkConfig(own.bin, file, env);
        expect(r.status === 0, `bin/${own.bin} --check-config with the container's env ${JSON.stringify(env)}: ${(r.stdout + r.stderr).trim()}`);
    }
    const ds = find(objs, "DaemonSet", "ebpf-monitor");
    const env = Object.fromEntries((ds.spec.template.spec.containers[0].env || []).map((e) => [e.name, e]));
    expect(env.NODE_NAME?.valueFrom?.fieldRef?.fieldPath === "spec.nodeName", "agent NODE_NAME from spec.nodeName");
    expect(env.POD_NAME?.valueFrom?.fieldRef?.fieldPath === "metadata.name", "agent POD_NAME from metadata.name");
    expect(env.POD_NAMESPACE?.valueFrom?.fieldRef?.fieldPath === "metadata.namespace", "agent POD_NAMESPACE from metadata.namespace");
    expect(env.BATCH_SIZE?.value && env.FLUSH_INTERVAL?.value, "agent sets BATCH_SIZE and FLUSH_INTERVAL");
};

checks.security = () => {
    const objs = kustomize("manifests");
    securityProblems(objs).forEach(fail);
    const priv = deployRender(["--privileged"]);
    const pds = find(priv, "DaemonSet", "ebpf-monitor");
    expect(pds?.spec.template.spec.containers[0].securityContext?.privileged === true, "the privileged fallback (manifests/components/privileged) renders a privileged agent");
    if (!failures.length) ok("DaemonSet not privileged, least-privilege capabilities, RBAC, NetworkPolicy");
};

const AGENT_CAPS = new Set(["BPF", "PERFMON", "SYS_RESOURCE", "SYSLOG", "NET_ADMIN"]);

function securityProblems(objs) {
    const p = [];
    const ds = find(objs, "DaemonSet", "ebpf-monitor");
    const spec = ds.spec.template.spec;
    for (const c of containersOf(ds)) {
        const sc = c.securityContext || {};
        if (sc.privileged !== false && sc.privileged !== undefined) p.push(`DaemonSet container ${c.name} is privileged`);
        if (sc.privileged === undefined) p.push(`DaemonSet container ${c.name} does not say privileged: false`);
        if (sc.allowPrivilegeEscalation !== false) p.push(`DaemonSet container ${c.name} allows privilege escalation`);
        if (sc.readOnlyRootFilesystem !== true) p.push(`DaemonSet container ${c.name} root filesystem is writable`);
        if (!(sc.capabilities?.drop || []).includes("ALL")) p.push(`DaemonSet container ${c.name} does not drop ALL capabilities`);
        const add = sc.capabilities?.add || [];
        for (const cap of add) if (!AGENT_CAPS.has(cap)) p.push(`DaemonSet container ${c.name} adds capability ${cap}, not in the justified set`);
        for (const cap of ["BPF", "PERFMON"]) if (!add.includes(cap)) p.push(`DaemonSet container ${c.name} lacks CAP_${cap}`);
        for (const m of c.volumeMounts || []) {
            const v = spec.volumes.find((x) => x.name === m.name);
            if (v?.hostPath && m.readOnly !== true) p.push(`host path ${v.hostPath.path} mounted writable`);
        }
    }
    if (!(spec.tolerations || []).some((t) => t.operator === "Exists" && !t.key && !t.effect)) p.push("DaemonSet does not tolerate every taint");
    const hostPaths = spec.volumes.filter((v) => v.hostPath).map((v) => v.hostPath.path).sort();
    if (JSON.stringify(hostPaths) !== JSON.stringify(["/sys/fs/cgroup", "/sys/kernel/btf"])) p.push(`DaemonSet host paths ${hostPaths} are not exactly the cgroup fs and BTF`);
    if (spec.hostNetwork || spec.hostIPC) p.push("DaemonSet uses the host network or IPC namespace");
    // The aggregator: non-root, read-only; its token only reads Services and EndpointSlices.
    const dep = find(objs, "Deployment", "ebpf-aggregator");
    const ps = dep.spec.template.spec;
    for (const c of containersOf(dep)) {
        const sc = { ...(ps.securityContext || {}), ...(c.securityContext || {}) };
        if (sc.runAsNonRoot !== true || !(sc.runAsUser > 0)) p.push(`aggregator container ${c.name} may run as root`);
        if (sc.readOnlyRootFilesystem !== true) p.push(`aggregator container ${c.name} root filesystem is writable`);
        if (sc.privileged === true || sc.allowPrivilegeEscalation !== false) p.push(`aggregator container ${c.name} can gain privileges`);
        if (sc.capabilities?.add?.length) p.push(`aggregator container ${c.name} adds capabilities`);
    }
    // RBAC: the agent reads pods, and gets Jobs (a Job-owned pod's CronJob);
    // the aggregator reads Services and EndpointSlices; nothing else is
    // granted to anyone.
    const grantedTo = {
        [ds.spec.template.spec.serviceAccountName]: { "/pods": ["get", "list", "watch"], "batch/jobs": ["get"] },
        [ps.serviceAccountName]: { "/services": ["get", "list", "watch"], "discovery.k8s.io/endpointslices": ["get", "list", "watch"] },
    };
    const roles = objs.filter((o) => o.kind === "ClusterRole" || o.kind === "Role");
    const bindings = objs.filter((o) => o.kind === "ClusterRoleBinding" || o.kind === "RoleBinding");
    const bound = new Set();
    for (const b of bindings) {
        const role = roles.find((r) => r.kind === b.roleRef.kind && r.metadata.name === b.roleRef.name);
        if (!role) p.push(`${b.kind}/${b.metadata.name} binds a role that is not in the manifests`);
        for (const s of b.subjects || []) {
            const granted = s.kind === "ServiceAccount" && s.namespace === "ebpf-system" ? grantedTo[s.name] : undefined;
            if (!granted) {
                p.push(`${b.kind}/${b.metadata.name} grants to ${s.kind}/${s.name}`);
                continue;
            }
            bound.add(s.name);
            for (const rule of role?.rules || []) {
                const wide = rule.apiGroups.some((g) => rule.resources.some((r) => rule.verbs.some((v) => !(granted[`${g}/${r}`] || []).includes(v))));
                if (wide) p.push(`${role.kind}/${role.metadata.name} grants ${s.name} more than get/list/watch on ${Object.keys(granted).join(", ")} (get only on batch/jobs): ${JSON.stringify(rule)}`);
            }
        }
    }
    if (!bound.has(ds.spec.template.spec.serviceAccountName)) p.push("the agent's ServiceAccount is not bound to a pod reader role");
    if (!bound.has(ps.serviceAccountName)) p.push("the aggregator's ServiceAccount is not bound to a Service reader role");
    const aggSa = find(objs, "ServiceAccount", ps.serviceAccountName);
    if (!aggSa) p.push("aggregator ServiceAccount missing");
    // NetworkPolicy: NATS's client port only from agents and aggregators
    // (and pods labelled for it); the aggregator API not open to the world.
    const natsPol = objs.find((o) => o.kind === "NetworkPolicy" && o.spec.podSelector?.matchLabels?.app === "nats");
    if (!natsPol) p.push("no NetworkPolicy selects NATS");
    for (const rule of natsPol?.spec.ingress || []) {
        if (!rule.ports?.some((x) => x.port === 4222)) continue;
        for (const from of rule.from || [{}]) {
            const sel = from.podSelector || {};
            const allowed = (sel.matchExpressions || []).every((e) => e.key === "app" && e.operator === "In" && e.values.every((v) => ["ebpf-monitor", "ebpf-aggregator"].includes(v)));
            const labelled = Object.keys(sel.matchLabels || {}).length > 0;
            if (from.namespaceSelector || from.ipBlock || (!labelled && !(sel.matchExpressions || []).length) || !allowed) p.push(`NATS 4222 reachable from ${JSON.stringify(from)}`);
        }
    }
    const aggPol = objs.find((o) => o.kind === "NetworkPolicy" && o.spec.podSelector?.matchLabels?.app === "ebpf-aggregator");
    if (!aggPol) p.push("no NetworkPolicy restricts the aggregator API");
    for (const rule of aggPol?.spec.ingress || []) {
        if (!rule.from) p.push("aggregator API open to every source");
        for (const from of rule.from || []) {
            if (from.ipBlock || (from.namespaceSelector && !Object.keys(from.podSelector?.matchLabels || {}).length)) p.push(`aggregator API reachable from ${JSON.stringify(from)}`);
        }
    }
    return p;
}

// ---------------------------------------------------------- NATS security

// The bus is authenticated: one NATS user per role with the least
// permissions the code needs (see manifests/nats/auth.conf), passwords only
// from Secrets, and the workloads logging in as their role.
function authProblems(objs) {
    const p = [];
    const conf = natsConf(objs);
    const cfg = YAML.parse(configYaml(objs)) || {};
    const prefix = cfg.SUBJECT_PREFIX || helpKeys("ebpf-agent").SUBJECT_PREFIX;
    const control = cfg.CONTROL_SUBJECT || helpKeys("ebpf-aggregator").CONTROL_SUBJECT;
    const events = `${prefix}.>`;
    const ctl = `${control}.>`;
    const users = asList(conf.authorization?.users);
    if (conf.no_auth_user || conf.authorization?.user || conf.authorization?.token || conf.accounts) p.push("NATS config has an anonymous, single-user, token or account login next to the users");
    if (!users.length) p.push("NATS config has no authorization users: anyone may connect");
    const sts = find(objs, "StatefulSet", "nats");
    const natsEnv = envOf(sts.spec.template.spec.containers[0]);
    // A password is $VAR, and VAR comes from a Secret on the NATS servers.
    const passwordSecret = (pw, who) => {
        const v = typeof pw === "string" && pw.match(/^\$([A-Za-z_][A-Za-z0-9_]*)$/)?.[1];
        if (!v) {
            p.push(`${who}: password is a literal in the NATS config, not $VAR from a Secret`);
            return null;
        }
        const ref = natsEnv[v]?.valueFrom?.secretKeyRef;
        if (!ref) p.push(`${who}: $${v} is not fed from a Secret on the NATS StatefulSet`);
        return ref ? `${ref.name}/${ref.key}` : null;
    };
    for (const u of users) passwordSecret(u.password, `NATS user ${u.user}`);
    const route = conf.cluster?.authorization;
    if (conf.cluster && !route) p.push("NATS cluster routes are not authenticated");
    if (route) passwordSecret(route.password, "NATS route user");
    for (const own of OWN) {
        const w = find(objs, own.kind, own.name);
        const env = envOf(w.spec.template.spec.containers[0]);
        const id = `${own.kind}/${own.name}`;
        if (env.NATS_PASSWORD?.value !== undefined || env.NATS_TOKEN?.value !== undefined) p.push(`${id}: NATS password as a literal in the manifest`);
        const ref = env.NATS_PASSWORD?.valueFrom?.secretKeyRef;
        if (!ref) {
            p.push(`${id}: NATS_PASSWORD is not from a Secret (valueFrom.secretKeyRef)`);
            continue;
        }
        const name = env.NATS_USER?.value ?? null;
        const u = users.find((x) => x.user === name);
        if (!u) {
            p.push(`${id}: NATS_USER ${name} is not a user of the NATS config`);
            continue;
        }
        if (passwordSecret(u.password, `NATS user ${name}`) !== `${ref.name}/${ref.key}`) p.push(`${id}: NATS_PASSWORD (Secret ${ref.name}/${ref.key}) is not the password NATS expects for ${name}`);
        const pub = u.permissions?.publish, sub = u.permissions?.subscribe;
        // A permission given as a list is an allow list.
        const allow = (x) => (Array.isArray(x) || typeof x === "string" ? asList(x) : asList(x?.allow));
        const deny = (x) => (x && !Array.isArray(x) && typeof x === "object" ? asList(x.deny) : []);
        if (own.kind === "DaemonSet") {
            if (!sameSet(allow(pub), [events]) || deny(pub).length) p.push(`agent user ${name} may publish to ${JSON.stringify(pub)}, not only ${events}`);
            // Only the server's "no responders" statuses for its batches (pkg/publisher.c).
            if (!sameSet(allow(sub), ["_EBPF_UNHEARD.>"]) || deny(sub).length) p.push(`agent user ${name} may subscribe to ${JSON.stringify(sub)}, not only _EBPF_UNHEARD.>`);
        } else {
            if (!sameSet(allow(sub), [events, ctl, "_INBOX.>"])) p.push(`aggregator user ${name} subscribes to ${JSON.stringify(sub)}, not exactly ${events}, ${ctl}, _INBOX.>`);
            if (!sameSet(allow(pub), [ctl, "_INBOX.>"])) p.push(`aggregator user ${name} publishes to ${JSON.stringify(pub)}, not exactly ${ctl}, _INBOX.>`);
        }
        if (!allow(pub).length) p.push(`${name} may publish anywhere (no publish allow list)`);
    }
    for (const u of users) if (!OWN.some((own) => envOf(find(objs, own.kind, own.name).spec.template.spec.containers[0]).NATS_USER?.value === u.user)) p.push(`NATS user ${u.user} is used by no workload`);
    // Passwords live in Secrets that scripts/deploy.sh creates, never in the manifests.
    for (const o of objs) if (o.kind === "Secret") p.push(`Secret ${o.metadata.name} is in the manifests: passwords would be in the repository`);
    return p;
}

// NATS is highly available: three servers clustered over the headless
// Service, spread over nodes, a PodDisruptionBudget, clients that know them all.
function haProblems(objs) {
    const p = [];
    const sts = find(objs, "StatefulSet", "nats");
    const spec = sts.spec.template.spec;
    const n = sts.spec.replicas;
    if (n !== 3) p.push(`NATS StatefulSet has ${n} replicas, not 3`);
    if (sts.spec.podManagementPolicy !== "Parallel") p.push("NATS servers start one by one (podManagementPolicy is not Parallel): the first waits for routes that never come");
    const anti = spec.affinity?.podAntiAffinity;
    const terms = [...(anti?.preferredDuringSchedulingIgnoredDuringExecution || []).map((t) => t.podAffinityTerm), ...(anti?.requiredDuringSchedulingIgnoredDuringExecution || [])];
    if (!terms.some((t) => t.topologyKey === "kubernetes.io/hostname" && t.labelSelector?.matchLabels?.app === "nats")) p.push("NATS servers have no pod anti-affinity by hostname");
    const pdb = objs.find((o) => o.kind === "PodDisruptionBudget" && o.spec.selector?.matchLabels?.app === "nats");
    if (!pdb || !(pdb.spec.maxUnavailable === 1 || pdb.spec.minAvailable === 2)) p.push(`NATS PodDisruptionBudget missing or not keeping 2 of 3 servers: ${JSON.stringify(pdb?.spec)}`);
    const headless = find(objs, "Service", sts.spec.serviceName);
    if (!headless || headless.spec.clusterIP !== "None") p.push(`NATS serviceName ${sts.spec.serviceName} is not a headless Service`);
    const c = spec.containers[0];
    const clusterPort = (c.ports || []).find((x) => x.name === "cluster")?.containerPort;
    if (!headless?.spec.ports.some((x) => x.targetPort === "cluster" || x.port === clusterPort)) p.push("the headless Service does not carry the cluster port");
    const conf = natsConf(objs);
    const listen = String(conf.cluster?.listen || "");
    if (!conf.cluster || Number(listen.split(":").pop()) !== clusterPort) p.push(`NATS cluster listen ${listen} is not the container's cluster port ${clusterPort}`);
    // The routes, as the kubelet expands them.
    const env = containerEnv(sts, c);
    const routes = asList(conf.cluster?.routes).map((r) => (String(r).startsWith("$") ? env[String(r).slice(1)] : r));
    const targets = routes.map((r) => r && r.match(/^nats(?:-route)?:\/\/(?:[^@/]+@)?([^:/]+):(\d+)$/)).map((m) => (m ? `${m[1]}:${m[2]}` : "?"));
    const want = [...Array(n).keys()].map((i) => `${sts.metadata.name}-${i}.${sts.spec.serviceName}:${clusterPort}`);
    if (!sameSet(targets, want)) p.push(`NATS routes ${targets} are not every server ${want}`);
    const route = conf.cluster?.authorization;
    for (const r of routes) if (route && !(r || "").includes(`//${route.user}:${env[String(route.password).slice(1)]}@`)) p.push(`NATS route ${r} does not log in as the route user`);
    const urls = String(YAML.parse(configYaml(objs)).NATS_URL || "").split(",").map((u) => u.trim());
    for (let i = 0; i < n; i++) if (!urls.some((u) => u.startsWith(`nats://${sts.metadata.name}-${i}.${sts.spec.serviceName}:`))) p.push(`NATS_URL does not list server ${sts.metadata.name}-${i}`);
    // The cluster port only between the servers.
    const pol = objs.find((o) => o.kind === "NetworkPolicy" && o.spec.podSelector?.matchLabels?.app === "nats");
    for (const rule of pol?.spec.ingress || []) {
        if (!rule.ports?.some((x) => x.port === clusterPort)) continue;
        for (const from of rule.from || [{}]) if (from.namespaceSelector || from.ipBlock || from.podSelector?.matchLabels?.app !== "nats") p.push(`NATS cluster port reachable from ${JSON.stringify(from)}`);
    }
    if (!pol?.spec.ingress?.some((r) => r.ports?.some((x) => x.port === clusterPort))) p.push("the NetworkPolicy blocks the NATS cluster port between the servers");
    return p;
}

checks.auth = () => {
    const objs = kustomize("manifests");
    authProblems(objs).forEach(fail);
    const conf = natsConf(objs);
    const users = asList(conf.authorization?.users);
    for (const u of users) ok(`NATS user ${u.user}: publish ${JSON.stringify(u.permissions?.publish)}, subscribe ${JSON.stringify(u.permissions?.subscribe)}`);
    // The same holds with another namespace, registry and tag.
    const other = deployRender(["--namespace", "mon", "--registry", "r.example/x", "--tag", "v1"]);
    const po = authProblems(other);
    po.forEach(fail);
    expect(po.length === 0, "deploy.sh render --namespace mon: the same users and Secrets");
    if (!failures.length) ok("NATS users per role with least privilege, passwords from Secrets");
};

checks.ha = () => {
    const objs = kustomize("manifests");
    haProblems(objs).forEach(fail);
    const t = natsConfigTest(objs);
    expect(t.status === 0, `nats-server -t accepts the clustered config ${(t.stdout + t.stderr).trim()}`);
    if (!failures.length) ok("NATS: 3 servers, routes between all of them, anti-affinity, PodDisruptionBudget, clients know every server");
};

// deploy.sh against a stand-in kubectl that keeps Secrets in a directory:
// it creates exactly the Secrets the manifests read, with random passwords
// nats-server takes as strings, keeps existing ones, and rotates them.
checks.secrets = () => {
    const objs = kustomize("manifests");
    const refs = new Set();
    // The Secrets deploy.sh makes: those the workloads need (an optional one, the API token, is the user's).
    for (const w of workloads(objs)) for (const c of containersOf(w)) for (const e of c.env || []) if (e.valueFrom?.secretKeyRef && !e.valueFrom.secretKeyRef.optional) refs.add(`${e.valueFrom.secretKeyRef.name}/${e.valueFrom.secretKeyRef.key}`);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ebpf-fake-kubectl-"));
    const fake = path.join(dir, "kubectl");
    fs.writeFileSync(fake, `#!/bin/bash
# A kubectl stand-in: logs its arguments, keeps Secrets as files.
all="$*"
echo "$all" >> "${dir}/calls"
case "$all" in
version*) exit 0 ;;
*"get namespace"*) [ -e "${dir}/namespace" ]; exit $? ;;
*"create namespace"*) echo "kind: Namespace"; exit 0 ;;
*"get secret "*) n=\${all##*get secret }; [ -e "${dir}/secret-\${n%% *}" ]; exit $? ;;
*"-f -"*)
    in=$(cat)
    if ! grep -q "^kind: Secret" <<<"$in"; then touch "${dir}/namespace"; exit 0; fi
    n=$(sed -n 's/^  name: //p' <<<"$in")
    case "$all" in *" create "*) [ -e "${dir}/secret-$n" ] && { echo "AlreadyExists" >&2; exit 1; } ;; *" replace "*) [ -e "${dir}/secret-$n" ] || exit 1 ;; esac
    printf '%s\n' "$in" > "${dir}/secret-$n"; exit 0 ;;
*"kustomize"*|*"apply -k"*|*rollout*) exit 0 ;;
esac
exit 0
`);
    fs.chmodSync(fake, 0o755);
    const script = path.join(ROOT, "scripts/deploy.sh");
    const env = { ...process.env, KUBECTL: fake, ROLLOUT_TIMEOUT: "1s" };
    const secrets = () => Object.fromEntries(fs.readdirSync(dir).filter((f) => f.startsWith("secret-")).map((f) => {
        const o = YAML.parse(fs.readFileSync(path.join(dir, f), "utf8"));
        return [o.metadata.name, o];
    }));
    let r = run(script, ["deploy"], { env });
    expect(r.status === 0, `deploy.sh deploy (stand-in kubectl): ${r.stderr.trim()}`);
    const calls = fs.readFileSync(path.join(dir, "calls"), "utf8").split("\n");
    const firstApply = calls.findIndex((l) => /apply -k/.test(l));
    const lastSecret = calls.map((l, i) => (/create -f -/.test(l) ? i : -1)).reduce((a, b) => Math.max(a, b), -1);
    expect(firstApply > lastSecret && lastSecret >= 0, "deploy creates the Secrets before it applies the manifests");
    const made = secrets();
    const keys = new Set(Object.values(made).flatMap((o) => Object.keys(o.stringData || {}).map((k) => `${o.metadata.name}/${k}`)));
    expect(sameSet([...keys], [...refs]), `deploy.sh creates exactly the Secret keys the workloads read: ${[...keys]} vs ${[...refs]}`);
    const pw = Object.values(made).map((o) => String(o.stringData?.password ?? ""));
    expect(pw.every((x) => /^[A-Za-z][A-Za-z0-9]{31,}$/.test(x)), "passwords are 32+ letters and digits, starting with a letter (nats-server reads them as strings)");
    expect(new Set(pw).size === pw.length, "every Secret has its own password");
    expect(Object.values(made).every((o) => o.metadata.namespace === NS), `Secrets in namespace ${NS}`);
    r = run(script, ["secrets"], { env });
    const again = secrets();
    expect(r.status === 0 && Object.keys(made).every((k) => again[k].stringData.password === made[k].stringData.password), "deploy.sh secrets keeps existing Secrets");
    r = run(script, ["rotate-secrets"], { env });
    const rotated = secrets();
    expect(r.status === 0 && Object.keys(made).every((k) => rotated[k].stringData.password !== made[k].stringData.password), `deploy.sh rotate-secrets replaces every password ${r.stderr.trim()}`);
    const after = fs.readFileSync(path.join(dir, "calls"), "utf8");
    expect(/rollout restart statefulset\/nats[\s\S]*rollout restart deployment\/ebpf-aggregator/.test(after) && /rollout restart daemonset\/ebpf-monitor/.test(after), "rotate-secrets restarts NATS, then the aggregators and agents");
    expect(!after.includes(pw[0]), "no password on a kubectl command line");
    fs.rmSync(dir, { recursive: true, force: true });
};

// Starts each binary with the rendered config and its container's env (the
// agent with exactly the DaemonSet's capabilities), then asks the probe
// paths on the port the probes use.
checks.probes = async () => {
    const objs = kustomize("manifests");
    const file = tmpFile("config.yaml", configYaml(objs));
    const natsPort = await freePort(); // nothing listens: the binaries must still serve /health
    for (const own of OWN) {
        const w = find(objs, own.kind, own.name);
        const c = w.spec.template.spec.containers[0];
        const id = `${own.kind}/${own.name}`;
        const ports = Object.fromEntries((c.ports || []).map((p) => [p.name, p.containerPort]));
        const listen = helpKeys(own.bin).LISTEN_ADDR;
        const env = containerEnv(w, c);
        const cfgListen = YAML.parse(configYaml(objs)).LISTEN_ADDR;
        const served = Number((env.LISTEN_ADDR || cfgListen || listen).split(":").pop());
        for (const kind of ["livenessProbe", "readinessProbe"]) {
            const g = c[kind]?.httpGet;
            const port = typeof g?.port === "string" ? ports[g.port] : g?.port;
            expect(g && port === served, `${id} ${kind} on port ${port}, where ${own.bin} listens (${served})`);
        }
        expect(c.livenessProbe?.httpGet?.path === "/health" && c.readinessProbe?.httpGet?.path === "/ready", `${id} probes /health (liveness) and /ready (readiness)`);
        if (own.bin === "ebpf-agent" && process.getuid() !== 0) {
            console.log(`skip: starting ${own.bin} needs root (eBPF)`);
            continue;
        }
        const port = await freePort();
        const runEnv = { ...process.env, ...env, LISTEN_ADDR: `127.0.0.1:${port}`, NATS_URL: `nats://127.0.0.1:${natsPort}` };
        let cmd = path.join(ROOT, "bin", own.bin);
        let args = ["--config", file];
        if (own.kind === "DaemonSet") {
            const bnd = boundingSet();
            const caps = (c.securityContext.capabilities.add || []).filter((x) => {
                const bit = CAP_BITS[x];
                if (bit === undefined) throw new Error(`unknown capability ${x}`);
                if (bnd & (1n << BigInt(bit))) return true;
                console.log(`note: CAP_${x} is outside this machine's bounding set; testing without it`);
                return false;
            });
            const set = ["-all", ...caps.map((x) => "+" + x.toLowerCase())].join(",");
            args = ["--inh-caps", set, "--bounding-set", set, cmd, ...args];
            cmd = "setpriv";
        }
        const child = spawn(cmd, args, { env: runEnv, stdio: ["ignore", "pipe", "pipe"] });
        let log = "";
        child.stdout.on("data", (d) => (log += d));
        child.stderr.on("data", (d) => (log += d));
        let exited = null;
        child.on("exit", (code, sig) => (exited = code ?? sig));
        const base = `http://127.0.0.1:${port}`;
        // The readiness probe's path: wait for it to be served (the agent
        // answers 200 once its programs are attached; the aggregator 503
        // without NATS); the liveness path must answer 200.
        const deadline = Date.now() + 15000;
        let ready = { status: 0 };
        while (Date.now() < deadline && exited === null) {
            ready = await httpStatus(base + c.readinessProbe.httpGet.path);
            if (ready.status === 200 || (own.kind === "Deployment" && ready.status === 503)) break;
            await new Promise((r) => setTimeout(r, 100));
        }
        const health = await httpStatus(base + c.livenessProbe.httpGet.path);
        // With the DaemonSet's capabilities every program must attach, not just one.
        const progs = own.kind === "DaemonSet" ? await httpStatus(base + "/api/programs", runEnv.API_TOKEN) : null;
        child.kill("SIGTERM");
        await new Promise((r) => (exited !== null ? r() : child.on("exit", r)));
        expect(health.status === 200, `${own.bin} serves ${c.livenessProbe.httpGet.path}: ${health.status}`);
        if (own.kind === "DaemonSet") {
            expect(ready.status === 200, `${own.bin}, with only the DaemonSet's capabilities, is ready: ${ready.status} ${ready.body}`);
            let failed = ["(no answer)"];
            try {
                failed = JSON.parse(progs.body).programs.filter((p) => p.status === "failed").map((p) => `${p.name}: ${p.error}`);
            } catch (e) {}
            expect(failed.length === 0, `${own.bin}, with only the DaemonSet's capabilities, attaches every program (failed: ${failed.join("; ")})`);
        }
        else expect([200, 503].includes(ready.status), `${own.bin} serves ${c.readinessProbe.httpGet.path} (not ready without NATS): ${ready.status} ${ready.body}`);
        if (failures.length) console.log(log);
    }
};

checks.dockerfiles = () => {
    const ignore = fs.readFileSync(path.join(ROOT, ".dockerignore"), "utf8").split("\n").map((l) => l.trim());
    for (const d of ["build", "bin", ".git"]) expect(ignore.includes(d), `.dockerignore excludes ${d}`);
    for (const d of ["pkg", "cmd", "bpf", "scripts", "mk", "GNUmakefile"]) expect(!ignore.includes(d), `.dockerignore keeps ${d} (make needs it)`);
    const base = new Set(["libc6", "libgcc-s1"]); // in every debian:12-slim
    const checked = new Set();
    for (const own of OWN) {
        const stages = dockerfile(own.dockerfile);
        const build = stages[0];
        const final = stages[stages.length - 1];
        expect(stages.length >= 2 && build.image === "debian:12", `${own.dockerfile}: multi-stage, builds on debian:12`);
        expect(build.lines.some((l) => l.instr === "RUN" && /(^|&&\s*)make deps && make(\s|$)/.test(l.arg)), `${own.dockerfile}: the build stage runs make deps && make`);
        expect(final.image === "debian:12-slim", `${own.dockerfile}: runs on debian:12-slim`);
        const copies = final.lines.filter((l) => l.instr === "COPY" && /--from=/.test(l.arg)).map((l) => l.arg);
        const bins = copies.map((a) => a.match(/\/bin\/([\w-]+)\s/)?.[1]).filter(Boolean);
        expect(bins.length === 1 && bins[0] === own.bin, `${own.dockerfile}: ships bin/${own.bin}`);
        const user = final.lines.filter((l) => l.instr === "USER").pop()?.arg;
        if (own.kind === "Deployment") expect(user && !/^(0|root)(:|$)/.test(user), `${own.dockerfile}: runs as non-root (USER ${user})`);
        const pkgs = aptPackages(final);
        expect(final.lines.some((l) => l.instr === "RUN" && /apt-get install .*--no-install-recommends/.test(l.arg)), `${own.dockerfile}: apt-get install --no-install-recommends`);
        for (const { lib, pkg } of libraryPackages(path.join(ROOT, "bin", own.bin))) {
            if (!pkg) {
                if (!/^(linux-vdso|linux-gate)/.test(lib)) fail(`${own.bin}: ${lib} belongs to no Debian package`);
                continue;
            }
            expect(pkgs.includes(pkg) || base.has(pkg), `${own.bin} links ${lib}, from ${pkg}, which the runtime image has`);
        }
        const fresh = pkgs.filter((p) => !checked.has(p));
        fresh.forEach((p) => checked.add(p));
        const policy = run("apt-cache", ["policy", ...fresh]).stdout;
        const cands = {};
        for (const m of policy.matchAll(/^(\S+?)(?::\S+)?:\n\s+Installed:.*\n\s+Candidate:\s*(\S+)/gm)) cands[m[1]] = m[2];
        for (const p of fresh) expect(cands[p] && cands[p] !== "(none)", `Debian package ${p} exists (candidate ${cands[p]}${cands[p] ? "" : "; if apt's package lists are empty, run apt-get update"})`);
    }
};

checks.deploy = () => {
    const script = path.join(ROOT, "scripts/deploy.sh");
    const help = run(script, ["--help"]);
    expect(help.status === 0 && /--registry/.test(help.stdout) && /--namespace/.test(help.stdout), "deploy.sh --help");
    for (const cmd of ["build", "push", "deploy", "undeploy", "status", "logs", "all"]) expect(new RegExp(`^  ${cmd}\\b`, "m").test(help.stdout), `deploy.sh --help lists ${cmd}`);
    const objs = deployRender(["--namespace", "observability", "--registry", "registry.example:5000/team", "--tag", "1.2.3"]);
    expect(find(objs, "Namespace", "observability") && !find(objs, "Namespace", NS), "--namespace renames the Namespace");
    const stray = objs.filter((o) => o.metadata.namespace && o.metadata.namespace !== "observability");
    expect(!stray.length, `--namespace moves every namespaced object ${stray.map((o) => o.kind + "/" + o.metadata.name)}`);
    const crb = objs.find((o) => o.kind === "ClusterRoleBinding");
    expect(crb.subjects.every((s) => s.namespace === "observability"), "--namespace updates the ClusterRoleBinding subject");
    expect(find(objs, "DaemonSet", "ebpf-monitor").spec.template.spec.containers[0].image === "registry.example:5000/team/ebpf-monitor:1.2.3", "--registry/--tag set the agent image");
    expect(find(objs, "Deployment", "ebpf-aggregator").spec.template.spec.containers[0].image === "registry.example:5000/team/ebpf-aggregator:1.2.3", "--registry/--tag set the aggregator image");
    const same = run(script, ["render"]).stdout === run("kubectl", ["kustomize", "manifests"]).stdout;
    expect(same, "deploy.sh render with the defaults is kubectl kustomize manifests");
    for (const [args, word] of [[["render", "--tag", "bad tag"], "--tag"], [["render", "--registry", "UPPER/x"], "--registry"], [["render", "--namespace", "Bad_NS"], "--namespace"], [["frobnicate"], "frobnicate"], [["render", "--bogus"], "--bogus"], [["render", "--tag"], "--tag"]]) {
        const r = run(script, args);
        expect(r.status === 2 && r.stderr.includes(word) && r.stderr.split("\n").filter(Boolean).length === 1, `deploy.sh ${args.join(" ")}: exit 2, one-line error naming ${word}`);
    }
};

// Every command in docs/kubernetes.md's code blocks names things that exist:
// deploy.sh commands and flags, make targets, kubectl resources, labels,
// ports and env keys, tail flags, API paths and filters.
checks.docs = () => {
    const md = fs.readFileSync(path.join(ROOT, "docs/kubernetes.md"), "utf8");
    const lines = [...md.matchAll(/```sh\n([\s\S]*?)```/g)].flatMap((m) => m[1].split("\n")).map((l) => l.replace(/\s+#.*$/, "").trim()).filter(Boolean);
    expect(lines.length > 20, `docs/kubernetes.md has ${lines.length} command lines`);
    const objs = kustomize("manifests");
    const help = run(path.join(ROOT, "scripts/deploy.sh"), ["--help"]).stdout;
    const agentKeys = helpKeys("ebpf-agent");
    const aggKeys = helpKeys("ebpf-aggregator");
    const tailHelp = run(path.join(ROOT, "bin/ebpf-aggregator"), ["tail", "--help"]).stdout;
    const kinds = { daemonset: "DaemonSet", ds: "DaemonSet", deployment: "Deployment", deploy: "Deployment", svc: "Service", service: "Service", statefulset: "StatefulSet", sts: "StatefulSet", configmap: "ConfigMap", cm: "ConfigMap", endpoints: "Service" };
    const apiPaths = ["/api/events", "/api/events/stream", "/api/stats", "/api/nodes", "/api/programs", "/health", "/ready", "/metrics"];
    const filters = ["type", "node", "pod", "namespace", "pid", "command", "since", "until", "limit", "cursor"];
    for (const l of lines) {
        let m;
        if ((m = l.match(/scripts\/deploy\.sh\s+(\S+)(.*)$/))) {
            expect(new RegExp(`^  ${m[1]}\\b`, "m").test(help), `deploy.sh command ${m[1]}: ${l}`);
            for (const f of m[2].match(/--[a-z-]+/g) || []) expect(help.includes(`  ${f}`), `deploy.sh flag ${f}: ${l}`);
        }
        if ((m = l.match(/^make\s+(.*)$/))) {
            const words = m[1].split(/\s+/);
            const r = run("make", ["-n", "-s", "--no-print-directory", ...words]);
            expect(r.status === 0 && !/No rule to make target/.test(r.stderr), `make -n ${words.join(" ")}`);
        }
        if (/^kubectl\b/.test(l) && !/\bkustomize\b|apply -k|delete -k/.test(l)) {
            const ns = l.match(/(?:-n|--namespace)\s+(\S+)/)?.[1];
            if (!/auth can-i/.test(l)) expect(ns === NS, `kubectl command names namespace ${NS}: ${l}`);
            for (const r of l.matchAll(/\b(daemonset|ds|deployment|deploy|svc|service|statefulset|sts|configmap|cm)\/([a-z0-9-]+)/g)) expect(find(objs, kinds[r[1]], r[2]), `${kinds[r[1]]} ${r[2]} exists: ${l}`);
            if ((m = l.match(/get endpoints (\S+)/))) expect(find(objs, "Service", m[1]), `Service ${m[1]} exists: ${l}`);
            for (const r of l.matchAll(/-l\s+app=([a-z0-9-]+)/g)) expect(workloads(objs).some((w) => w.spec.template.metadata.labels.app === r[1]), `pods labelled app=${r[1]} exist: ${l}`);
            if ((m = l.match(/port-forward\s+svc\/([a-z0-9-]+)\s+\d+:(\d+)/))) expect(find(objs, "Service", m[1])?.spec.ports.some((p) => p.port === Number(m[2])), `Service ${m[1]} has port ${m[2]}: ${l}`);
            if ((m = l.match(/set env\s+(\S+)\/\S+\s+(.*)$/))) {
                const keys = m[1] === "daemonset" ? agentKeys : aggKeys;
                for (const kv of m[2].split(/\s+/)) {
                    const [k, v] = kv.split("=");
                    expect(k in keys, `${k} is a key of ${m[1] === "daemonset" ? "ebpf-agent" : "ebpf-aggregator"}: ${l}`);
                    const r = checkConfig(m[1] === "daemonset" ? "ebpf-agent" : "ebpf-aggregator", tmpFile("c.yaml", configYaml(objs)), { [k]: v });
                    expect(r.status === 0, `${k}=${v} passes --check-config: ${(r.stdout + r.stderr).trim()}`);
                }
            }
            if ((m = l.match(/--as=system:serviceaccount:([^:]+):(\S+)/))) expect(m[1] === NS && find(objs, "ServiceAccount", m[2]), `ServiceAccount ${m[2]} exists: ${l}`);
        }
        if ((m = l.match(/ebpf-aggregator tail(.*)$/))) for (const f of m[1].match(/--[a-z-]+/g) || []) expect(tailHelp.includes(f + " "), `ebpf-aggregator tail ${f}: ${l}`);
        for (const u of l.matchAll(/http:\/\/localhost:(\d+)(\/[^'\s?]*)(?:\?([^'\s]*))?/g)) {
            const [, port, p, q] = u;
            expect(apiPaths.includes(p), `API path ${p}: ${l}`);
            if (p === "/api/programs") expect(port === "8080", `/api/programs is asked of the agent (8080): ${l}`);
            for (const kv of (q || "").split("&").filter(Boolean)) expect(filters.includes(kv.split("=")[0]), `filter ${kv}: ${l}`);
        }
    }
    for (const label of md.matchAll(/ebpf-monitor\/(api-access|nats-access)=true/g)) expect(JSON.stringify(objs.filter((o) => o.kind === "NetworkPolicy")).includes(`"ebpf-monitor/${label[1]}":"true"`), `NetworkPolicy honours ebpf-monitor/${label[1]}=true`);
    expect(fs.existsSync(path.join(ROOT, "manifests/components/privileged/kustomization.yaml")) && md.includes("manifests/components/privileged"), "the privileged fallback the docs name exists");
};

// The checks catch what they are for: broken copies of the real objects fail.
checks.selftest = () => {
    const objs = kustomize("manifests");
    const clone = () => structuredClone(objs);
    let o = clone();
    find(o, "Deployment", "ebpf-aggregator").spec.replicas = "two";
    expect(schemaProblems(find(o, "Deployment", "ebpf-aggregator")).length > 0, "schema check rejects replicas: \"two\"");
    o = clone();
    find(o, "DaemonSet", "ebpf-monitor").spec.template.spec.containers[0].readinesProbe = {};
    expect(schemaProblems(find(o, "DaemonSet", "ebpf-monitor")).some((p) => /readinesProbe: unknown field/.test(p)), "schema check rejects a misspelt field");
    o = clone();
    find(o, "DaemonSet", "ebpf-monitor").spec.template.spec.containers[0].securityContext.privileged = true;
    expect(securityProblems(o).some((p) => /privileged/.test(p)), "policy rejects a privileged DaemonSet");
    o = clone();
    find(o, "DaemonSet", "ebpf-monitor").spec.template.spec.containers[0].securityContext.capabilities.add.push("SYS_ADMIN");
    expect(securityProblems(o).some((p) => /SYS_ADMIN/.test(p)), "policy rejects CAP_SYS_ADMIN");
    o = clone();
    find(o, "ClusterRole", "ebpf-monitor").rules[0].verbs.push("delete");
    expect(securityProblems(o).some((p) => /more than get\/list\/watch/.test(p)), "policy rejects a wider ClusterRole");
    o = clone();
    find(o, "ClusterRole", "ebpf-monitor").rules.find((r) => r.resources.includes("jobs")).verbs.push("list");
    expect(securityProblems(o).some((p) => /more than get\/list\/watch/.test(p)), "policy rejects listing Jobs");
    o = clone();
    find(o, "ClusterRole", "ebpf-aggregator").rules.push({ apiGroups: [""], resources: ["pods"], verbs: ["list"] });
    expect(securityProblems(o).some((p) => /grants ebpf-aggregator more than/.test(p)), "policy rejects an aggregator that may list pods");
    o = clone();
    find(o, "ClusterRole", "ebpf-aggregator").rules[0].verbs.push("update");
    expect(securityProblems(o).some((p) => /grants ebpf-aggregator more than/.test(p)), "policy rejects an aggregator that may update Services");
    o = clone();
    o.find((x) => x.kind === "NetworkPolicy" && x.metadata.name === "nats").spec.ingress[0].from.push({ namespaceSelector: {} });
    expect(securityProblems(o).some((p) => /NATS 4222/.test(p)), "policy rejects NATS open to other namespaces");
    expect(securityProblems(objs).length === 0, "the real manifests pass the policy");
    // The bus's users and HA: broken copies of the NATS config fail.
    const withConf = (edit) => {
        const o = clone();
        const cm = find(o, "ConfigMap", "nats-config");
        cm.data["auth.conf"] = edit(cm.data["auth.conf"]);
        return o;
    };
    expect(authProblems(withConf((t) => t.replace('allow: ["_EBPF_UNHEARD.>"]', 'allow: ["_EBPF_UNHEARD.>", "ebpf.events.>"]'))).some((p) => /agent user .* may subscribe/.test(p)), "policy rejects an agent that may subscribe to events");
    expect(authProblems(withConf((t) => t.replace('allow: ["_EBPF_UNHEARD.>"]', 'allow: [">"]'))).some((p) => /agent user .* may subscribe/.test(p)), "policy rejects an agent that may subscribe anywhere");
    expect(authProblems(withConf((t) => t.replace('allow: ["ebpf.events.>"]', 'allow: ["ebpf.events.>", "ebpf.control.>"]'))).some((p) => /agent user .* may publish/.test(p)), "policy rejects an agent that may publish control messages");
    expect(authProblems(withConf((t) => t.replace('allow: ["ebpf.control.>", "_INBOX.>"]', 'allow: [">"]'))).some((p) => /aggregator user .* publishes/.test(p)), "policy rejects an aggregator that may publish events");
    expect(authProblems(withConf((t) => t.replace("$NATS_AGENT_PASSWORD", "hunter2"))).some((p) => /literal/.test(p)), "policy rejects a literal password in the NATS config");
    o = clone();
    find(o, "DaemonSet", "ebpf-monitor").spec.template.spec.containers[0].env.find((e) => e.name === "NATS_PASSWORD").valueFrom = undefined;
    find(o, "DaemonSet", "ebpf-monitor").spec.template.spec.containers[0].env.find((e) => e.name === "NATS_PASSWORD").value = "hunter2";
    expect(authProblems(o).some((p) => /literal in the manifest/.test(p)), "policy rejects a literal NATS_PASSWORD");
    o = clone();
    find(o, "Deployment", "ebpf-aggregator").spec.template.spec.containers[0].env.find((e) => e.name === "NATS_PASSWORD").valueFrom.secretKeyRef.name = "nats-credentials-agent";
    expect(authProblems(o).some((p) => /not the password NATS expects/.test(p)), "policy rejects an aggregator logging in with the agent's Secret");
    expect(authProblems(objs).length === 0, "the real manifests pass the bus policy");
    o = clone();
    find(o, "StatefulSet", "nats").spec.replicas = 1;
    expect(haProblems(o).some((p) => /replicas/.test(p)), "HA check rejects one NATS server");
    o = clone();
    o.splice(o.findIndex((x) => x.kind === "PodDisruptionBudget" && x.metadata.name === "nats"), 1);
    expect(haProblems(o).some((p) => /PodDisruptionBudget/.test(p)), "HA check rejects NATS without a PodDisruptionBudget");
    o = clone();
    find(o, "ConfigMap", "nats-config").data["nats.conf"] = find(o, "ConfigMap", "nats-config").data["nats.conf"].replace(/\$NATS_ROUTE_2/, "");
    expect(haProblems(o).some((p) => /routes/.test(p)), "HA check rejects a server missing from the routes");
    expect(haProblems(objs).length === 0, "the real manifests pass the HA check");
};

const name = process.argv[2];
if (!checks[name]) {
    console.error(`usage: node tests/k8s/check.mjs ${Object.keys(checks).join("|")}`);
    process.exit(2);
}
try {
    await checks[name]();
} catch (e) {
    fail(`${name}: ${e.message}`);
}
console.log(failures.length ? `${name}: ${failures.length} failure(s)` : `${name}: pass`);
process.exit(failures.length ? 1 : 0);
