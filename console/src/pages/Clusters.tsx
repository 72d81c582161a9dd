import { useEffect, useState, type FormEvent } from "react";
import { Link, useNavigate, useParams } from "react-router-dom";
import { list, request } from "../api";
import { useCanEdit } from "../auth";
import {
  ConfirmButton,
  ErrorBanner,
  PageHeader,
  Pagination,
  StateBadge,
  Table,
  formatTime,
  splitList,
  usePagedList,
} from "../components";
import type { Scheduler, SchedulerCluster, SeedPeer, SeedPeerCluster } from "../types";

function scopeText(c: SchedulerCluster): string {
  return (
    [c.scopes?.idc && `IDC ${c.scopes.idc}`, c.scopes?.location && `location ${c.scopes.location}`]
      .concat((c.scopes?.cidrs ?? []).map((cidr) => `CIDR ${cidr}`))
      .concat((c.scopes?.hostnames ?? []).map((h) => `host ${h}`))
      .filter(Boolean)
      .join(", ") || "–"
  );
}

/** Names of the other kind of cluster, for the linked-cluster columns and checkboxes. */
function useClusterNames(path: string): Map<number, string> {
  const [names, setNames] = useState(new Map<number, string>());
  useEffect(() => {
    list<{ id: number; name: string }>(path, 1, 100)
      .then((page) => setNames(new Map(page.items.map((c) => [c.id, c.name]))))
      .catch(() => undefined);
  }, [path]);
  return names;
}

function DeleteButton({ path, what, reload }: { path: string; what: string; reload: () => void }) {
  return (
    <ConfirmButton
      label="Delete"
      question={`Delete ${what}? Its schedulers and seed peers lose their configuration.`}
      onConfirm={async () => {
        await request(path, { method: "DELETE" });
        reload();
      }}
    />
  );
}

export function SchedulerClusterList() {
  const canEdit = useCanEdit();
  const seedNames = useClusterNames("/seed-peer-clusters");
  const { data, page, setPage, error, reload } = usePagedList<SchedulerCluster>("/scheduler-clusters");
  return (
    <>
      <PageHeader title="Scheduler clusters">
        {canEdit && (
          <Link className="button primary" to="/scheduler-clusters/new">
            Create scheduler cluster
          </Link>
        )}
      </PageHeader>
      <p className="muted">
        A scheduler cluster serves the hosts its scopes match (the default cluster serves the rest); its seed-peer
        clusters fetch from the origin for it.
      </p>
      <ErrorBanner error={error} />
      <Table<SchedulerCluster>
        caption="Scheduler clusters"
        rows={data?.items}
        empty="No scheduler clusters yet."
        columns={[
          { header: "Name", cell: (c) => <Link to={`/scheduler-clusters/${c.id}`}>{c.name}</Link> },
          { header: "Description", cell: (c) => c.bio || "–" },
          { header: "Scopes", cell: scopeText },
          { header: "Default", cell: (c) => (c.is_default ? "yes" : "no") },
          {
            header: "Seed peer clusters",
            cell: (c) => (c.seed_peer_cluster_ids ?? []).map((id) => seedNames.get(id) ?? `#${id}`).join(", ") || "–",
          },
          { header: "Created", cell: (c) => formatTime(c.created_at) },
          {
            header: "Actions",
            cell: (c) =>
              canEdit ? (
                <span className="row-actions">
                  <Link className="button" to={`/scheduler-clusters/${c.id}`}>
                    Edit
                  </Link>
                  <DeleteButton path={`/scheduler-clusters/${c.id}`} what={`scheduler cluster "${c.name}"`} reload={reload} />
                </span>
              ) : (
                <Link to={`/scheduler-clusters/${c.id}`}>View</Link>
              ),
          },
        ]}
      />
      <Pagination page={page} data={data} setPage={setPage} />
    </>
  );
}

export interface ClusterForm {
  name: string;
  bio: string;
  idc: string;
  location: string;
  cidrs: string;
  hostnames: string;
  candidateParentLimit: string;
  filterParentLimit: string;
  jobRateLimit: string;
  peerLoadLimit: string;
  isDefault: boolean;
  linked: number[];
}

const EMPTY: ClusterForm = {
  name: "",
  bio: "",
  idc: "",
  location: "",
  cidrs: "",
  hostnames: "",
  candidateParentLimit: "3",
  filterParentLimit: "15",
  jobRateLimit: "10",
  peerLoadLimit: "200",
  isDefault: false,
  linked: [],
};

function toForm(cluster: SchedulerCluster): ClusterForm {
  const num = (value: number | undefined, fallback: string) => (value === undefined ? fallback : String(value));
  return {
    name: cluster.name,
    bio: cluster.bio ?? "",
    idc: cluster.scopes?.idc ?? "",
    location: cluster.scopes?.location ?? "",
    cidrs: (cluster.scopes?.cidrs ?? []).join(", "),
    hostnames: (cluster.scopes?.hostnames ?? []).join(", "),
    candidateParentLimit: num(cluster.config?.candidate_parent_limit, EMPTY.candidateParentLimit),
    filterParentLimit: num(cluster.config?.filter_parent_limit, EMPTY.filterParentLimit),
    jobRateLimit: num(cluster.config?.job_rate_limit, EMPTY.jobRateLimit),
    peerLoadLimit: num(cluster.client_config?.load_limit, EMPTY.peerLoadLimit),
    isDefault: cluster.is_default ?? false,
    linked: cluster.seed_peer_cluster_ids ?? [],
  };
}

const CIDR = /^(\d{1,3}(\.\d{1,3}){3}\/\d{1,2}|[0-9a-fA-F:]+\/\d{1,3})$/;
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$/;

function checkRange(problems: string[], text: string, label: string, low: number, high: number): void {
  const value = Number(text.trim());
  if (!/^\d+$/.test(text.trim()) || value < low || value > high)
    problems.push(`${label}: a whole number from ${low} to ${high}.`);
}

function checkName(problems: string[], name: string): void {
  if (!name.trim()) problems.push("Name is required.");
  else if (!NAME.test(name.trim()))
    problems.push("Name: letters, digits, '.', '_' and '-', starting with a letter or digit.");
}

/** Check the form the way the manager will (Dragonfly's limits), so mistakes are named before sending. */
export function validateCluster(form: ClusterForm): string[] {
  const problems: string[] = [];
  checkName(problems, form.name);
  if (form.bio.length > 1024) problems.push("Description: at most 1024 characters.");
  for (const cidr of splitList(form.cidrs)) if (!CIDR.test(cidr)) problems.push(`CIDR "${cidr}" is not a CIDR.`);
  for (const pattern of splitList(form.hostnames)) {
    try {
      new RegExp(pattern);
    } catch {
      problems.push(`Host name pattern "${pattern}" is not a regular expression.`);
    }
  }
  checkRange(problems, form.candidateParentLimit, "Candidate parent limit", 1, 20);
  checkRange(problems, form.filterParentLimit, "Filter parent limit", 10, 1000);
  checkRange(problems, form.jobRateLimit, "Job rate limit", 1, 1000000);
  checkRange(problems, form.peerLoadLimit, "Peer load limit", 1, 2000);
  return problems;
}

export function clusterBody(form: ClusterForm) {
  return {
    name: form.name.trim(),
    bio: form.bio,
    scopes: {
      idc: form.idc.trim(),
      location: form.location.trim(),
      cidrs: splitList(form.cidrs),
      hostnames: splitList(form.hostnames),
    },
    config: {
      candidate_parent_limit: Number(form.candidateParentLimit),
      filter_parent_limit: Number(form.filterParentLimit),
      job_rate_limit: Number(form.jobRateLimit),
    },
    client_config: { load_limit: Number(form.peerLoadLimit) },
    is_default: form.isDefault,
    seed_peer_cluster_ids: form.linked,
  };
}

function Problems({ problems }: { problems: string[] }) {
  if (problems.length === 0) return null;
  return (
    <ul className="error" role="alert" aria-label="Problems in the form">
      {problems.map((problem) => (
        <li key={problem}>{problem}</li>
      ))}
    </ul>
  );
}

function LinkedClusters({
  names,
  value,
  onChange,
  disabled,
  label,
}: {
  names: Map<number, string>;
  value: number[];
  onChange: (ids: number[]) => void;
  disabled: boolean;
  label: string;
}) {
  return (
    <div role="group" aria-label={label}>
      <p className="muted">{label}</p>
      {names.size === 0 && <p className="muted">none exist</p>}
      {[...names].map(([id, name]) => (
        <label key={id} className="checkbox">
          <input
            type="checkbox"
            disabled={disabled}
            checked={value.includes(id)}
            onChange={(e) => onChange(e.target.checked ? [...value, id] : value.filter((v) => v !== id))}
          />
          {name}
        </label>
      ))}
    </div>
  );
}

export function SchedulerClusterEdit() {
  const { id } = useParams();
  const creating = id === undefined || id === "new";
  const canEdit = useCanEdit();
  const navigate = useNavigate();
  const seedNames = useClusterNames("/seed-peer-clusters");
  const [form, setForm] = useState<ClusterForm>(EMPTY);
  const [loaded, setLoaded] = useState<SchedulerCluster | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [problems, setProblems] = useState<string[]>([]);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    if (creating) return;
    request<SchedulerCluster>(`/scheduler-clusters/${id}`)
      .then((cluster) => {
        setLoaded(cluster);
        setForm(toForm(cluster));
      })
      .catch(setError);
  }, [creating, id]);

  const field = (key: keyof ClusterForm) => ({
    value: String(form[key]),
    onChange: (event: { target: { value: string } }) => setForm({ ...form, [key]: event.target.value }),
    disabled: !canEdit,
  });

  const submit = (event: FormEvent) => {
    event.preventDefault();
    const found = validateCluster(form);
    setProblems(found);
    if (found.length > 0) return;
    setBusy(true);
    setError(null);
    request<SchedulerCluster>(creating ? "/scheduler-clusters" : `/scheduler-clusters/${id}`, {
      method: creating ? "POST" : "PATCH",
      body: clusterBody(form),
    })
      .then(() => navigate("/scheduler-clusters"))
      .catch((caught: unknown) => {
        setError(caught);
        setBusy(false);
      });
  };

  const title = creating ? "Create scheduler cluster" : `Scheduler cluster ${loaded?.name ?? id}`;
  return (
    <>
      <PageHeader title={title}>
        <Link className="button" to="/scheduler-clusters">
          Back to scheduler clusters
        </Link>
      </PageHeader>
      {!canEdit && <p className="muted">You can read this cluster; only root can change it.</p>}
      {!creating && !loaded ? (
        error ? <ErrorBanner error={error} /> : <p className="muted">Loading…</p>
      ) : (
      <form className="form" onSubmit={submit} noValidate aria-label={title}>
        <fieldset>
          <legend>Cluster</legend>
          <label>
            Name
            <input name="name" required maxLength={255} {...field("name")} />
          </label>
          <label>
            Description
            <textarea name="bio" maxLength={1024} {...field("bio")} />
          </label>
          <label className="checkbox">
            <input
              type="checkbox"
              name="is_default"
              checked={form.isDefault}
              disabled={!canEdit}
              onChange={(e) => setForm({ ...form, isDefault: e.target.checked })}
            />
            Default cluster (serves hosts no scope matches)
          </label>
          <LinkedClusters
            label="Seed peer clusters"
            names={seedNames}
            value={form.linked}
            disabled={!canEdit}
            onChange={(linked) => setForm({ ...form, linked })}
          />
        </fieldset>
        <fieldset>
          <legend>Scopes</legend>
          <label>
            IDC
            <input name="idc" {...field("idc")} />
          </label>
          <label>
            Location
            <input name="location" placeholder="country|province|city" {...field("location")} />
          </label>
          <label>
            CIDRs (comma separated)
            <input name="cidrs" placeholder="10.0.0.0/8, 192.168.0.0/16" {...field("cidrs")} />
          </label>
          <label>
            Host name patterns (regular expressions, comma separated)
            <input name="hostnames" {...field("hostnames")} />
          </label>
        </fieldset>
        <fieldset>
          <legend>Configuration</legend>
          <label>
            Candidate parent limit
            <input name="candidate_parent_limit" inputMode="numeric" {...field("candidateParentLimit")} />
          </label>
          <label>
            Filter parent limit
            <input name="filter_parent_limit" inputMode="numeric" {...field("filterParentLimit")} />
          </label>
          <label>
            Job rate limit (per second)
            <input name="job_rate_limit" inputMode="numeric" {...field("jobRateLimit")} />
          </label>
          <label>
            Peer load limit (concurrent uploads per peer)
            <input name="peer_load_limit" inputMode="numeric" {...field("peerLoadLimit")} />
          </label>
        </fieldset>
        <Problems problems={problems} />
        <ErrorBanner error={error} />
        {canEdit && (
          <div className="actions">
            <button type="submit" className="primary" disabled={busy}>
              {creating ? "Create" : "Save"}
            </button>
          </div>
        )}
      </form>
      )}
      {!creating && loaded && <SchedulersOf clusterId={loaded.id} />}
    </>
  );
}

function SchedulersOf({ clusterId }: { clusterId: number }) {
  const schedulers = usePagedList<Scheduler>("/schedulers", { scheduler_cluster_id: clusterId });
  return (
    <section aria-label="Schedulers of this cluster">
      <h2>Schedulers</h2>
      <ErrorBanner error={schedulers.error} />
      <Table<Scheduler>
        caption="Schedulers of this cluster"
        rows={schedulers.data?.items}
        empty="No schedulers in this cluster."
        columns={[
          { header: "Host name", cell: (s) => s.host_name ?? s.hostname },
          { header: "Address", cell: (s) => `${s.ip}:${s.port}` },
          { header: "State", cell: (s) => <StateBadge state={s.state} /> },
        ]}
      />
      <Pagination page={schedulers.page} data={schedulers.data} setPage={schedulers.setPage} />
    </section>
  );
}

export function SeedPeerClusterList() {
  const canEdit = useCanEdit();
  const schedulerNames = useClusterNames("/scheduler-clusters");
  const { data, page, setPage, error, reload } = usePagedList<SeedPeerCluster>("/seed-peer-clusters");
  return (
    <>
      <PageHeader title="Seed peer clusters">
        {canEdit && (
          <Link className="button primary" to="/seed-peer-clusters/new">
            Create seed peer cluster
          </Link>
        )}
      </PageHeader>
      <ErrorBanner error={error} />
      <Table<SeedPeerCluster>
        caption="Seed peer clusters"
        rows={data?.items}
        empty="No seed peer clusters yet."
        columns={[
          { header: "Name", cell: (c) => <Link to={`/seed-peer-clusters/${c.id}`}>{c.name}</Link> },
          { header: "Description", cell: (c) => c.bio || "–" },
          { header: "Load limit", cell: (c) => c.config?.load_limit ?? "–" },
          {
            header: "Scheduler clusters",
            cell: (c) =>
              (c.scheduler_cluster_ids ?? []).map((id) => schedulerNames.get(id) ?? `#${id}`).join(", ") || "–",
          },
          { header: "Created", cell: (c) => formatTime(c.created_at) },
          {
            header: "Actions",
            cell: (c) =>
              canEdit ? (
                <span className="row-actions">
                  <Link className="button" to={`/seed-peer-clusters/${c.id}`}>
                    Edit
                  </Link>
                  <DeleteButton path={`/seed-peer-clusters/${c.id}`} what={`seed peer cluster "${c.name}"`} reload={reload} />
                </span>
              ) : (
                <Link to={`/seed-peer-clusters/${c.id}`}>View</Link>
              ),
          },
        ]}
      />
      <Pagination page={page} data={data} setPage={setPage} />
    </>
  );
}

export function SeedPeerClusterEdit() {
  const { id } = useParams();
  const creating = id === undefined || id === "new";
  const canEdit = useCanEdit();
  const navigate = useNavigate();
  const schedulerNames = useClusterNames("/scheduler-clusters");
  const [form, setForm] = useState({ name: "", bio: "", loadLimit: "2000", linked: [] as number[] });
  const [loaded, setLoaded] = useState<SeedPeerCluster | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [problems, setProblems] = useState<string[]>([]);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    if (creating) return;
    request<SeedPeerCluster>(`/seed-peer-clusters/${id}`)
      .then((cluster) => {
        setLoaded(cluster);
        setForm({
          name: cluster.name,
          bio: cluster.bio ?? "",
          loadLimit: String(cluster.config?.load_limit ?? 2000),
          linked: cluster.scheduler_cluster_ids ?? [],
        });
      })
      .catch(setError);
  }, [creating, id]);
  const submit = (event: FormEvent) => {
    event.preventDefault();
    const found: string[] = [];
    checkName(found, form.name);
    checkRange(found, form.loadLimit, "Load limit", 1, 50000);
    setProblems(found);
    if (found.length) return;
    setBusy(true);
    setError(null);
    request(creating ? "/seed-peer-clusters" : `/seed-peer-clusters/${id}`, {
      method: creating ? "POST" : "PATCH",
      body: {
        name: form.name.trim(),
        bio: form.bio,
        config: { load_limit: Number(form.loadLimit) },
        scheduler_cluster_ids: form.linked,
      },
    })
      .then(() => navigate("/seed-peer-clusters"))
      .catch((caught: unknown) => {
        setError(caught);
        setBusy(false);
      });
  };
  const title = creating ? "Create seed peer cluster" : `Seed peer cluster ${loaded?.name ?? id}`;
  return (
    <>
      <PageHeader title={title}>
        <Link className="button" to="/seed-peer-clusters">
          Back to seed peer clusters
        </Link>
      </PageHeader>
      {!creating && !loaded ? (
        error ? <ErrorBanner error={error} /> : <p className="muted">Loading…</p>
      ) : (
      <form className="form" onSubmit={submit} noValidate aria-label={title}>
        <fieldset>
          <legend>Cluster</legend>
          <label>
            Name
            <input
              name="name"
              value={form.name}
              disabled={!canEdit}
              onChange={(e) => setForm({ ...form, name: e.target.value })}
            />
          </label>
          <label>
            Description
            <textarea
              name="bio"
              value={form.bio}
              disabled={!canEdit}
              onChange={(e) => setForm({ ...form, bio: e.target.value })}
            />
          </label>
          <label>
            Load limit (concurrent uploads per seed peer)
            <input
              name="load_limit"
              inputMode="numeric"
              value={form.loadLimit}
              disabled={!canEdit}
              onChange={(e) => setForm({ ...form, loadLimit: e.target.value })}
            />
          </label>
          <LinkedClusters
            label="Scheduler clusters"
            names={schedulerNames}
            value={form.linked}
            disabled={!canEdit}
            onChange={(linked) => setForm({ ...form, linked })}
          />
        </fieldset>
        <Problems problems={problems} />
        <ErrorBanner error={error} />
        {canEdit && (
          <div className="actions">
            <button type="submit" className="primary" disabled={busy}>
              {creating ? "Create" : "Save"}
            </button>
          </div>
        )}
      </form>
      )}
      {!creating && loaded && <SeedPeersOf clusterId={loaded.id} />}
    </>
  );
}

function SeedPeersOf({ clusterId }: { clusterId: number }) {
  const seeds = usePagedList<SeedPeer>("/seed-peers", { seed_peer_cluster_id: clusterId });
  return (
    <section aria-label="Seed peers of this cluster">
      <h2>Seed peers</h2>
      <ErrorBanner error={seeds.error} />
      <Table<SeedPeer>
        caption="Seed peers of this cluster"
        rows={seeds.data?.items}
        empty="No seed peers in this cluster."
        columns={[
          { header: "Host name", cell: (s) => s.host_name ?? s.hostname },
          { header: "Address", cell: (s) => `${s.ip}:${s.port}` },
          { header: "State", cell: (s) => <StateBadge state={s.state} /> },
        ]}
      />
      <Pagination page={seeds.page} data={seeds.data} setPage={seeds.setPage} />
    </section>
  );
}
