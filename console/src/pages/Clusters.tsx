import { useEffect, useState, type FormEvent } from "react";
import { Link, useNavigate, useParams } from "react-router-dom";
import { request } from "../api";
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
import type { Cluster, Scheduler, SeedPeer } from "../types";

export function ClusterList() {
  const canEdit = useCanEdit();
  const { data, page, setPage, error, reload } = usePagedList<Cluster>("/clusters");
  const [actionError, setActionError] = useState<unknown>(null);
  return (
    <>
      <PageHeader title="Clusters">
        {canEdit && (
          <Link className="button primary" to="/clusters/new">
            Create cluster
          </Link>
        )}
      </PageHeader>
      <p className="muted">A cluster is a scheduler cluster with its seed-peer cluster; scopes decide which hosts it serves.</p>
      <ErrorBanner error={error ?? actionError} />
      <Table<Cluster>
        caption="Clusters"
        rows={data?.items}
        empty="No clusters yet."
        columns={[
          { header: "Name", cell: (c) => <Link to={`/clusters/${c.id}`}>{c.name}</Link> },
          { header: "Description", cell: (c) => c.bio || "–" },
          {
            header: "Scopes",
            cell: (c) =>
              [c.scopes?.idc && `IDC ${c.scopes.idc}`, c.scopes?.location && `location ${c.scopes.location}`]
                .concat((c.scopes?.cidrs ?? []).map((cidr) => `CIDR ${cidr}`))
                .concat((c.scopes?.hostnames ?? []).map((h) => `host ${h}`))
                .filter(Boolean)
                .join(", ") || "–",
          },
          { header: "Default", cell: (c) => (c.is_default ? "yes" : "no") },
          { header: "Created", cell: (c) => formatTime(c.created_at) },
          {
            header: "Actions",
            cell: (c) =>
              canEdit ? (
                <span className="row-actions">
                  <Link className="button" to={`/clusters/${c.id}`}>
                    Edit
                  </Link>
                  <ConfirmButton
                    label="Delete"
                    question={`Delete cluster "${c.name}"? Its schedulers and seed peers lose their configuration.`}
                    onConfirm={async () => {
                      setActionError(null);
                      await request(`/clusters/${c.id}`, { method: "DELETE" });
                      reload();
                    }}
                  />
                </span>
              ) : (
                <Link to={`/clusters/${c.id}`}>View</Link>
              ),
          },
        ]}
      />
      <Pagination page={page} data={data} setPage={setPage} />
    </>
  );
}

interface ClusterForm {
  name: string;
  bio: string;
  idc: string;
  location: string;
  cidrs: string;
  hostnames: string;
  candidateParentLimit: string;
  filterParentLimit: string;
  jobRateLimit: string;
  seedLoadLimit: string;
  peerLoadLimit: string;
  isDefault: boolean;
}

const EMPTY: ClusterForm = {
  name: "",
  bio: "",
  idc: "",
  location: "",
  cidrs: "",
  hostnames: "",
  candidateParentLimit: "4",
  filterParentLimit: "15",
  jobRateLimit: "10",
  seedLoadLimit: "2000",
  peerLoadLimit: "200",
  isDefault: false,
};

function toForm(cluster: Cluster): ClusterForm {
  const num = (value: number | undefined, fallback: string) => (value === undefined ? fallback : String(value));
  return {
    name: cluster.name,
    bio: cluster.bio ?? "",
    idc: cluster.scopes?.idc ?? "",
    location: cluster.scopes?.location ?? "",
    cidrs: (cluster.scopes?.cidrs ?? []).join(", "),
    hostnames: (cluster.scopes?.hostnames ?? []).join(", "),
    candidateParentLimit: num(cluster.scheduler_cluster_config?.candidate_parent_limit, EMPTY.candidateParentLimit),
    filterParentLimit: num(cluster.scheduler_cluster_config?.filter_parent_limit, EMPTY.filterParentLimit),
    jobRateLimit: num(cluster.scheduler_cluster_config?.job_rate_limit, EMPTY.jobRateLimit),
    seedLoadLimit: num(cluster.seed_peer_cluster_config?.load_limit, EMPTY.seedLoadLimit),
    peerLoadLimit: num(cluster.peer_cluster_config?.load_limit, EMPTY.peerLoadLimit),
    isDefault: cluster.is_default ?? false,
  };
}

const CIDR = /^(\d{1,3}(\.\d{1,3}){3}\/\d{1,2}|[0-9a-fA-F:]+\/\d{1,3})$/;

/** Check the form the way the manager will (Dragonfly's limits), so mistakes are named before sending. */
export function validateCluster(form: ClusterForm): string[] {
  const problems: string[] = [];
  if (!form.name.trim()) problems.push("Name is required.");
  else if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(form.name.trim()))
    problems.push("Name: letters, digits, '.', '_' and '-', at most 64 characters, starting with a letter or digit.");
  if (form.bio.length > 1024) problems.push("Description: at most 1024 characters.");
  for (const cidr of splitList(form.cidrs)) if (!CIDR.test(cidr)) problems.push(`CIDR "${cidr}" is not a CIDR.`);
  for (const pattern of splitList(form.hostnames)) {
    try {
      new RegExp(pattern);
    } catch {
      problems.push(`Host name pattern "${pattern}" is not a regular expression.`);
    }
  }
  const ranges: [keyof ClusterForm, string, number, number][] = [
    ["candidateParentLimit", "Candidate parent limit", 1, 20],
    ["filterParentLimit", "Filter parent limit", 10, 1000],
    ["jobRateLimit", "Job rate limit", 1, 1000000],
    ["seedLoadLimit", "Seed peer load limit", 1, 50000],
    ["peerLoadLimit", "Peer load limit", 1, 2000],
  ];
  for (const [key, label, low, high] of ranges) {
    const text = String(form[key]).trim();
    const value = Number(text);
    if (!/^\d+$/.test(text) || value < low || value > high) problems.push(`${label}: a whole number from ${low} to ${high}.`);
  }
  return problems;
}

function toBody(form: ClusterForm) {
  return {
    name: form.name.trim(),
    bio: form.bio,
    scopes: {
      idc: form.idc.trim(),
      location: form.location.trim(),
      cidrs: splitList(form.cidrs),
      hostnames: splitList(form.hostnames),
    },
    scheduler_cluster_config: {
      candidate_parent_limit: Number(form.candidateParentLimit),
      filter_parent_limit: Number(form.filterParentLimit),
      job_rate_limit: Number(form.jobRateLimit),
    },
    seed_peer_cluster_config: { load_limit: Number(form.seedLoadLimit) },
    peer_cluster_config: { load_limit: Number(form.peerLoadLimit) },
    is_default: form.isDefault,
  };
}

export function ClusterEdit() {
  const { id } = useParams();
  const creating = id === undefined || id === "new";
  const canEdit = useCanEdit();
  const navigate = useNavigate();
  const [form, setForm] = useState<ClusterForm>(EMPTY);
  const [loaded, setLoaded] = useState<Cluster | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [problems, setProblems] = useState<string[]>([]);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    if (creating) return;
    request<Cluster>(`/clusters/${id}`)
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
    request<Cluster>(creating ? "/clusters" : `/clusters/${id}`, {
      method: creating ? "POST" : "PATCH",
      body: toBody(form),
    })
      .then(() => navigate("/clusters"))
      .catch((caught: unknown) => {
        setError(caught);
        setBusy(false);
      });
  };

  const title = creating ? "Create cluster" : `Cluster ${loaded?.name ?? id}`;
  return (
    <>
      <PageHeader title={title}>
        <Link className="button" to="/clusters">
          Back to clusters
        </Link>
      </PageHeader>
      {!canEdit && <p className="muted">You can read this cluster; only root can change it.</p>}
      <form className="form" onSubmit={submit} noValidate aria-label={title}>
        <fieldset>
          <legend>Cluster</legend>
          <label>
            Name
            <input name="name" required maxLength={64} {...field("name")} />
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
            Seed peer load limit
            <input name="seed_load_limit" inputMode="numeric" {...field("seedLoadLimit")} />
          </label>
          <label>
            Peer load limit
            <input name="peer_load_limit" inputMode="numeric" {...field("peerLoadLimit")} />
          </label>
        </fieldset>
        {problems.length > 0 && (
          <ul className="error" role="alert" aria-label="Problems in the form">
            {problems.map((problem) => (
              <li key={problem}>{problem}</li>
            ))}
          </ul>
        )}
        <ErrorBanner error={error} />
        {canEdit && (
          <div className="actions">
            <button type="submit" className="primary" disabled={busy}>
              {creating ? "Create" : "Save"}
            </button>
          </div>
        )}
      </form>
      {!creating && loaded && <ClusterMembers cluster={loaded} />}
    </>
  );
}

function ClusterMembers({ cluster }: { cluster: Cluster }) {
  const schedulers = usePagedList<Scheduler>("/schedulers", {
    scheduler_cluster_id: cluster.scheduler_cluster_id ?? cluster.id,
  });
  const seeds = usePagedList<SeedPeer>("/seed-peers", { seed_peer_cluster_id: cluster.seed_peer_cluster_id ?? cluster.id });
  return (
    <section aria-label="Members">
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
