import { useEffect, useState } from "react";
import { Link } from "react-router-dom";
import { list } from "../api";
import { useCanEdit } from "../auth";
import {
  CheckboxGroup,
  DeleteButton,
  PageHeader,
  PagedTable,
  StateBadge,
  formatTime,
  splitList,
  usePagedList,
} from "../components";
import { EditPage, useResourceForm, type ResourceFormSpec } from "../forms";
import type { Scheduler, SchedulerCluster, SeedPeer, SeedPeerCluster } from "../types";

const DELETE_WARNING = "Its schedulers and seed peers lose their configuration.";

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

export function SchedulerClusterList() {
  const canEdit = useCanEdit();
  const seedNames = useClusterNames("/seed-peer-clusters");
  const list = usePagedList<SchedulerCluster>("/scheduler-clusters");
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
      <PagedTable<SchedulerCluster>
        list={list}
        caption="Scheduler clusters"
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
                  <DeleteButton
                    path={`/scheduler-clusters/${c.id}`}
                    question={`Delete scheduler cluster "${c.name}"? ${DELETE_WARNING}`}
                    reload={list.reload}
                  />
                </span>
              ) : (
                <Link to={`/scheduler-clusters/${c.id}`}>View</Link>
              ),
          },
        ]}
      />
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

const SCHEDULER_CLUSTER: ResourceFormSpec<SchedulerCluster, ClusterForm> = {
  path: "/scheduler-clusters",
  empty: EMPTY,
  toForm,
  validate: validateCluster,
  toBody: clusterBody,
};

export function SchedulerClusterEdit() {
  const seedNames = useClusterNames("/seed-peer-clusters");
  const state = useResourceForm(SCHEDULER_CLUSTER);
  const { form, setForm, field, canEdit, loaded, id } = state;
  return (
    <EditPage
      title={state.creating ? "Create scheduler cluster" : `Scheduler cluster ${loaded?.name ?? id}`}
      back={["/scheduler-clusters", "Back to scheduler clusters"]}
      state={state}
      after={
        loaded && (
          <Members<Scheduler> title="Schedulers" path="/schedulers" query={{ scheduler_cluster_id: loaded.id }} />
        )
      }
    >
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
        <CheckboxGroup<number>
          label="Seed peer clusters"
          options={[...seedNames]}
          empty="none exist"
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
    </EditPage>
  );
}

/** The schedulers or seed peers of one cluster, under its form. */
function Members<T extends Scheduler | SeedPeer>({
  title,
  path,
  query,
}: {
  title: string;
  path: string;
  query: Record<string, number>;
}) {
  const list = usePagedList<T>(path, query);
  return (
    <section aria-label={`${title} of this cluster`}>
      <h2>{title}</h2>
      <PagedTable<T>
        list={list}
        caption={`${title} of this cluster`}
        empty={`No ${title.toLowerCase()} in this cluster.`}
        columns={[
          { header: "Host name", cell: (s) => s.host_name ?? s.hostname },
          { header: "Address", cell: (s) => `${s.ip}:${s.port}` },
          { header: "State", cell: (s) => <StateBadge state={s.state} /> },
        ]}
      />
    </section>
  );
}

export function SeedPeerClusterList() {
  const canEdit = useCanEdit();
  const schedulerNames = useClusterNames("/scheduler-clusters");
  const list = usePagedList<SeedPeerCluster>("/seed-peer-clusters");
  return (
    <>
      <PageHeader title="Seed peer clusters">
        {canEdit && (
          <Link className="button primary" to="/seed-peer-clusters/new">
            Create seed peer cluster
          </Link>
        )}
      </PageHeader>
      <PagedTable<SeedPeerCluster>
        list={list}
        caption="Seed peer clusters"
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
                  <DeleteButton
                    path={`/seed-peer-clusters/${c.id}`}
                    question={`Delete seed peer cluster "${c.name}"? ${DELETE_WARNING}`}
                    reload={list.reload}
                  />
                </span>
              ) : (
                <Link to={`/seed-peer-clusters/${c.id}`}>View</Link>
              ),
          },
        ]}
      />
    </>
  );
}

interface SeedClusterForm {
  name: string;
  bio: string;
  loadLimit: string;
  linked: number[];
}

const SEED_PEER_CLUSTER: ResourceFormSpec<SeedPeerCluster, SeedClusterForm> = {
  path: "/seed-peer-clusters",
  empty: { name: "", bio: "", loadLimit: "2000", linked: [] },
  toForm: (cluster) => ({
    name: cluster.name,
    bio: cluster.bio ?? "",
    loadLimit: String(cluster.config?.load_limit ?? 2000),
    linked: cluster.scheduler_cluster_ids ?? [],
  }),
  validate: (form) => {
    const problems: string[] = [];
    checkName(problems, form.name);
    checkRange(problems, form.loadLimit, "Load limit", 1, 50000);
    return problems;
  },
  toBody: (form) => ({
    name: form.name.trim(),
    bio: form.bio,
    config: { load_limit: Number(form.loadLimit) },
    scheduler_cluster_ids: form.linked,
  }),
};

export function SeedPeerClusterEdit() {
  const schedulerNames = useClusterNames("/scheduler-clusters");
  const state = useResourceForm(SEED_PEER_CLUSTER);
  const { form, setForm, field, canEdit, loaded, id } = state;
  return (
    <EditPage
      title={state.creating ? "Create seed peer cluster" : `Seed peer cluster ${loaded?.name ?? id}`}
      back={["/seed-peer-clusters", "Back to seed peer clusters"]}
      state={state}
      after={
        loaded && (
          <Members<SeedPeer> title="Seed peers" path="/seed-peers" query={{ seed_peer_cluster_id: loaded.id }} />
        )
      }
    >
      <fieldset>
        <legend>Cluster</legend>
        <label>
          Name
          <input name="name" {...field("name")} />
        </label>
        <label>
          Description
          <textarea name="bio" {...field("bio")} />
        </label>
        <label>
          Load limit (concurrent uploads per seed peer)
          <input name="load_limit" inputMode="numeric" {...field("loadLimit")} />
        </label>
        <CheckboxGroup<number>
          label="Scheduler clusters"
          options={[...schedulerNames]}
          empty="none exist"
          value={form.linked}
          disabled={!canEdit}
          onChange={(linked) => setForm({ ...form, linked })}
        />
      </fieldset>
    </EditPage>
  );
}
