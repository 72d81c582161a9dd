import { useEffect, useState, type FormEvent } from "react";
import { Link, useNavigate, useParams } from "react-router-dom";
import { list, request } from "../api";
import { useCanEdit } from "../auth";
import {
  CheckboxGroup,
  ConfirmButton,
  ErrorBanner,
  FilterSelect,
  FormFooter,
  PageHeader,
  PagedTable,
  StateBadge,
  Table,
  formatTime,
  splitList,
  usePagedList,
} from "../components";
import type { Job, PreheatTaskResult, SchedulerCluster } from "../types";

const TERMINAL = new Set(["SUCCESS", "FAILURE", "CANCELED", "CANCELLED"]);

function jobUrls(job: Job): string {
  const args = job.args ?? {};
  const urls = Array.isArray(args.urls) ? (args.urls as string[]) : [];
  const url = typeof args.url === "string" && args.url ? [args.url] : [];
  return [...url, ...urls].join(", ") || "–";
}

export function JobList() {
  const canEdit = useCanEdit();
  const [state, setState] = useState("");
  const jobs = usePagedList<Job>("/jobs", { type: "preheat", state });
  const { reload } = jobs;
  // Refresh while any job on the page is still running.
  const running = (jobs.data?.items ?? []).some((job) => !TERMINAL.has(job.state));
  useEffect(() => {
    if (!running) return;
    const timer = window.setInterval(reload, 2000);
    return () => window.clearInterval(timer);
  }, [running, reload]);
  return (
    <>
      <PageHeader title="Preheat jobs">
        <FilterSelect
          label="State"
          value={state}
          options={[
            ["PENDING", "PENDING"],
            ["SUCCESS", "SUCCESS"],
            ["FAILURE", "FAILURE"],
          ]}
          onChange={(value) => {
            setState(value);
            jobs.setPage(1);
          }}
        />
        {canEdit && (
          <Link className="button primary" to="/jobs/new">
            Create preheat
          </Link>
        )}
      </PageHeader>
      <PagedTable<Job>
        list={jobs}
        caption="Preheat jobs"
        empty="No preheat jobs."
        columns={[
          { header: "ID", cell: (j) => <Link to={`/jobs/${j.id}`}>{j.id}</Link> },
          { header: "Kind", cell: (j) => String(j.args?.type ?? "file") },
          { header: "URL", cell: (j) => <span className="url">{jobUrls(j)}</span> },
          { header: "Scope", cell: (j) => String(j.args?.scope ?? "single_seed_peer") },
          { header: "State", cell: (j) => <StateBadge state={j.state} /> },
          { header: "Created", cell: (j) => formatTime(j.created_at) },
        ]}
      />
    </>
  );
}

export interface PreheatForm {
  kind: "file" | "image";
  urls: string;
  platform: string;
  scope: "single_seed_peer" | "all_seed_peers" | "all_peers";
  tag: string;
  application: string;
  headers: string;
  username: string;
  password: string;
  ips: string;
  count: string;
  percentage: string;
  clusters: number[];
}

export const EMPTY_PREHEAT: PreheatForm = {
  kind: "file",
  urls: "",
  platform: "linux/amd64",
  scope: "single_seed_peer",
  tag: "",
  application: "",
  headers: "",
  username: "",
  password: "",
  ips: "",
  count: "",
  percentage: "",
  clusters: [],
};

const MANIFEST = /^https?:\/\/[^/]+\/v2\/.+\/manifests\/[^/]+$/;

export function validatePreheat(form: PreheatForm): string[] {
  const problems: string[] = [];
  const urls = splitList(form.urls);
  if (urls.length === 0) problems.push("Enter at least one URL.");
  for (const url of urls) {
    if (!/^(https?|s3|gs|oss|obs|cos|hdfs):\/\/\S+$/.test(url)) problems.push(`"${url}" is not a URL.`);
    else if (form.kind === "image" && !MANIFEST.test(url))
      problems.push(`"${url}" is not a manifest URL (scheme://registry/v2/<repository>/manifests/<tag or digest>).`);
  }
  if (form.kind === "image" && urls.length > 1) problems.push("An image preheat takes one manifest URL.");
  if (form.kind === "image" && form.platform && !/^[a-z0-9]+\/[a-z0-9_]+(\/[a-z0-9]+)?$/.test(form.platform))
    problems.push("Platform: os/arch, for example linux/amd64.");
  for (const line of splitLines(form.headers)) {
    if (!/^[A-Za-z0-9-]+:\s*\S/.test(line)) problems.push(`Header "${line}" is not "Name: value".`);
  }
  if (form.scope !== "single_seed_peer") {
    for (const ip of splitList(form.ips))
      if (!/^[0-9a-fA-F.:]+$/.test(ip)) problems.push(`"${ip}" is not an IP address.`);
    if (form.count && !(/^\d+$/.test(form.count) && Number(form.count) >= 1 && Number(form.count) <= 200))
      problems.push("Count: 1 to 200.");
    if (form.percentage && !(/^\d+$/.test(form.percentage) && Number(form.percentage) >= 1 && Number(form.percentage) <= 100))
      problems.push("Percentage: 1 to 100.");
  }
  return problems;
}

function splitLines(text: string): string[] {
  return text
    .split("\n")
    .map((line) => line.trim())
    .filter(Boolean);
}

export function preheatBody(form: PreheatForm) {
  const urls = splitList(form.urls);
  const headers: Record<string, string> = {};
  for (const line of splitLines(form.headers)) {
    const at = line.indexOf(":");
    headers[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  const args: Record<string, unknown> = { type: form.kind, scope: form.scope };
  if (form.kind === "image") {
    args.url = urls[0];
    if (form.platform) args.platform = form.platform;
    if (form.username) args.username = form.username;
    if (form.password) args.password = form.password;
  } else if (urls.length === 1) args.url = urls[0];
  else args.urls = urls;
  if (form.tag) args.tag = form.tag;
  if (form.application) args.application = form.application;
  if (Object.keys(headers).length) args.headers = headers;
  if (form.scope !== "single_seed_peer") {
    const ips = splitList(form.ips);
    if (ips.length) args.ips = ips;
    if (form.count) args.count = Number(form.count);
    if (form.percentage) args.percentage = Number(form.percentage);
  }
  return {
    type: "preheat",
    args,
    ...(form.clusters.length ? { scheduler_cluster_ids: form.clusters } : {}),
  };
}

export function JobCreate() {
  const navigate = useNavigate();
  const [form, setForm] = useState<PreheatForm>(EMPTY_PREHEAT);
  const [clusters, setClusters] = useState<SchedulerCluster[]>([]);
  const [problems, setProblems] = useState<string[]>([]);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    list<SchedulerCluster>("/scheduler-clusters", 1, 100)
      .then((page) => setClusters(page.items))
      .catch(setError);
  }, []);
  const set = (patch: Partial<PreheatForm>) => setForm({ ...form, ...patch });
  const submit = (event: FormEvent) => {
    event.preventDefault();
    const found = validatePreheat(form);
    setProblems(found);
    if (found.length) return;
    setBusy(true);
    setError(null);
    request<Job>("/jobs", { method: "POST", body: preheatBody(form) })
      .then((job) => navigate(`/jobs/${job.id}`))
      .catch((caught: unknown) => {
        setError(caught);
        setBusy(false);
      });
  };
  return (
    <>
      <PageHeader title="Create preheat">
        <Link className="button" to="/jobs">
          Back to jobs
        </Link>
      </PageHeader>
      <form className="form" onSubmit={submit} noValidate aria-label="Create preheat">
        <fieldset>
          <legend>What to preheat</legend>
          <div role="radiogroup" aria-label="Kind" className="actions">
            {(["file", "image"] as const).map((kind) => (
              <label key={kind} className="checkbox">
                <input type="radio" name="kind" checked={form.kind === kind} onChange={() => set({ kind })} />
                {kind === "file" ? "File" : "Image"}
              </label>
            ))}
          </div>
          <label>
            {form.kind === "file" ? "URLs (one per line)" : "Manifest URL"}
            <textarea name="urls" value={form.urls} onChange={(e) => set({ urls: e.target.value })} />
          </label>
          {form.kind === "image" && (
            <>
              <label>
                Platform
                <input name="platform" value={form.platform} onChange={(e) => set({ platform: e.target.value })} />
              </label>
              <label>
                Registry user name
                <input name="username" value={form.username} onChange={(e) => set({ username: e.target.value })} />
              </label>
              <label>
                Registry password
                <input
                  name="registry_password"
                  type="password"
                  autoComplete="off"
                  value={form.password}
                  onChange={(e) => set({ password: e.target.value })}
                />
              </label>
            </>
          )}
          <label>
            Tag
            <input name="tag" value={form.tag} onChange={(e) => set({ tag: e.target.value })} />
          </label>
          <label>
            Application
            <input name="application" value={form.application} onChange={(e) => set({ application: e.target.value })} />
          </label>
          <label>
            Request headers (one "Name: value" per line)
            <textarea name="headers" value={form.headers} onChange={(e) => set({ headers: e.target.value })} />
          </label>
        </fieldset>
        <fieldset>
          <legend>Where</legend>
          <label>
            Scope
            <select
              name="scope"
              value={form.scope}
              onChange={(e) => set({ scope: e.target.value as PreheatForm["scope"] })}
            >
              <option value="single_seed_peer">one seed peer</option>
              <option value="all_seed_peers">all seed peers</option>
              <option value="all_peers">all peers</option>
            </select>
          </label>
          {form.scope !== "single_seed_peer" && (
            <>
              <label>
                Only these IPs (comma separated)
                <input name="ips" value={form.ips} onChange={(e) => set({ ips: e.target.value })} />
              </label>
              <label>
                Count of hosts
                <input name="count" inputMode="numeric" value={form.count} onChange={(e) => set({ count: e.target.value })} />
              </label>
              <label>
                Percentage of hosts
                <input
                  name="percentage"
                  inputMode="numeric"
                  value={form.percentage}
                  onChange={(e) => set({ percentage: e.target.value })}
                />
              </label>
            </>
          )}
          <CheckboxGroup<number>
            label="Scheduler clusters (none chosen: all)"
            options={clusters.map((cluster) => [cluster.id, cluster.name])}
            value={form.clusters}
            onChange={(chosen) => set({ clusters: chosen })}
          />
        </fieldset>
        <FormFooter problems={problems} error={error} busy={busy} submitLabel="Preheat" />
      </form>
    </>
  );
}

interface HostRow extends PreheatTaskResult {
  id?: number;
  ok: boolean;
  cluster?: number;
}

export function hostResults(job: Job): HostRow[] {
  const rows: HostRow[] = [];
  for (const entry of job.result?.job_states ?? []) {
    for (const result of entry.results ?? []) {
      if (!result) continue;
      for (const task of result.success_tasks ?? []) rows.push({ ...task, ok: true, cluster: result.scheduler_cluster_id });
      for (const task of result.failure_tasks ?? []) rows.push({ ...task, ok: false, cluster: result.scheduler_cluster_id });
    }
  }
  return rows;
}

export function JobDetail() {
  const { id } = useParams();
  const canEdit = useCanEdit();
  const [job, setJob] = useState<Job | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [generation, setGeneration] = useState(0);
  useEffect(() => {
    let live = true;
    request<Job>(`/jobs/${id}`)
      .then((found) => live && setJob(found))
      .catch((caught: unknown) => live && setError(caught));
    return () => {
      live = false;
    };
  }, [id, generation]);
  const done = job !== null && TERMINAL.has(job.state);
  useEffect(() => {
    if (job === null || done) return;
    const timer = window.setInterval(() => setGeneration((g) => g + 1), 1500);
    return () => window.clearInterval(timer);
  }, [job, done]);
  const rows = job ? hostResults(job) : [];
  const errors = [job?.result?.error, ...(job?.result?.job_states ?? []).map((s) => s.error)].filter(Boolean);
  return (
    <>
      <PageHeader title={`Preheat job ${id}`}>
        {canEdit && job && !done && (
          <ConfirmButton
            label="Cancel job"
            confirmLabel="Cancel job"
            question="Cancel this preheat? Downloads already finished stay on the hosts."
            onConfirm={async () => {
              await request(`/jobs/${id}/cancel`, { method: "POST" });
              setGeneration((g) => g + 1);
            }}
          />
        )}
        <Link className="button" to="/jobs">
          Back to jobs
        </Link>
      </PageHeader>
      <ErrorBanner error={error} />
      {job && (
        <dl className="facts">
          <dt>State</dt>
          <dd data-testid="job-state">
            <StateBadge state={job.state} />
          </dd>
          {job.progress?.phase && (
            <>
              <dt>Progress</dt>
              <dd data-testid="job-phase">
                {job.progress.phase}
                {job.progress.clusters ? ` (${job.progress.clusters_done ?? 0} of ${job.progress.clusters} clusters)` : ""}
              </dd>
            </>
          )}
          <dt>Kind</dt>
          <dd>{String(job.args?.type ?? "file")}</dd>
          <dt>URL</dt>
          <dd className="url">{jobUrls(job)}</dd>
          <dt>Scope</dt>
          <dd>{String(job.args?.scope ?? "single_seed_peer")}</dd>
          <dt>Created</dt>
          <dd>{formatTime(job.created_at)}</dd>
        </dl>
      )}
      {errors.length > 0 && (
        <div className="error" role="alert">
          {errors.join("; ")}
        </div>
      )}
      <h2>Per-host results</h2>
      <Table<HostRow>
        caption="Per-host results"
        rows={job ? rows : undefined}
        empty={done ? "No host results." : "Waiting for the hosts…"}
        rowKey={(r, i) => `${r.ip}-${r.url}-${i}`}
        columns={[
          { header: "Host", cell: (r) => r.hostname ?? "–" },
          { header: "IP", cell: (r) => r.ip ?? "–" },
          {
            header: "URL",
            cell: (r) =>
              r.url ? (
                <Link className="url" to={`/swarm?task=${encodeURIComponent(r.url)}`} title="Show its swarm">
                  {r.url}
                </Link>
              ) : (
                "–"
              ),
          },
          { header: "Result", cell: (r) => <StateBadge state={r.ok ? "SUCCESS" : "FAILURE"} /> },
          { header: "Detail", cell: (r) => r.description || "–" },
        ]}
      />
    </>
  );
}
