import { useEffect, useState, type FormEvent } from "react";
import { request } from "../api";
import { useCanEdit, useSession } from "../auth";
import {
  CheckboxGroup,
  DeleteButton,
  ErrorBanner,
  FormFooter,
  PageHeader,
  PagedTable,
  StateBadge,
  Table,
  formatTime,
  usePagedList,
} from "../components";
import type { Audit, Role, Token, User } from "../types";

function roleName(role: Role | string): string {
  return typeof role === "string" ? role : (role.name ?? role.role ?? "?");
}

function useRoleNames(): string[] {
  const [roles, setRoles] = useState<string[]>(["root", "guest"]);
  useEffect(() => {
    request<(Role | string)[]>("/roles")
      .then((found) => {
        if (Array.isArray(found) && found.length > 0) setRoles(found.map(roleName));
      })
      .catch(() => undefined);
  }, []);
  return roles;
}

function UserRoles({ user }: { user: User }) {
  const [roles, setRoles] = useState<string[] | null>(user.roles ?? null);
  useEffect(() => {
    if (user.roles) return;
    request<(Role | string)[]>(`/users/${user.id}/roles`)
      .then((found) => setRoles(Array.isArray(found) ? found.map(roleName) : []))
      .catch(() => setRoles([]));
  }, [user]);
  return <>{roles === null ? "…" : roles.join(", ") || "–"}</>;
}

export function validateUser(name: string, email: string, password: string): string[] {
  const problems: string[] = [];
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$/.test(name))
    problems.push("Name: letters, digits, '.', '_' or '-', starting with a letter or digit.");
  if (email && !/^[^@\s]+@[^@\s]+\.[^@\s]+$/.test(email)) problems.push("Email: not an email address.");
  if (password.length < 8 || password.length > 128) problems.push("Password: 8 to 128 characters.");
  return problems;
}

export function Users() {
  const canEdit = useCanEdit();
  const roles = useRoleNames();
  const users = usePagedList<User>("/users");
  const [form, setForm] = useState({ name: "", email: "", password: "", role: "guest" });
  const [problems, setProblems] = useState<string[]>([]);
  const [formError, setFormError] = useState<unknown>(null);
  const [notice, setNotice] = useState("");

  const submit = (event: FormEvent) => {
    event.preventDefault();
    const found = validateUser(form.name, form.email, form.password);
    setProblems(found);
    setNotice("");
    if (found.length) return;
    setFormError(null);
    request<User>("/users", {
      method: "POST",
      body: { name: form.name, email: form.email, password: form.password, roles: [form.role] },
    })
      .then((user) => {
        setNotice(`User ${user.name} created with role ${form.role}.`);
        setForm({ name: "", email: "", password: "", role: form.role });
        users.reload();
      })
      .catch(setFormError);
  };

  return (
    <>
      <PageHeader title="Users" />
      <PagedTable<User>
        list={users}
        caption="Users"
        columns={[
          { header: "Name", cell: (u) => u.name },
          { header: "Email", cell: (u) => u.email || "–" },
          { header: "State", cell: (u) => <StateBadge state={u.state ?? "enable"} /> },
          { header: "Roles", cell: (u) => <UserRoles user={u} /> },
          { header: "Created", cell: (u) => formatTime(u.created_at) },
        ]}
      />
      {canEdit && (
        <form className="form" onSubmit={submit} noValidate aria-label="Create user">
          <fieldset>
            <legend>Create user</legend>
            <label>
              Name
              <input name="name" value={form.name} onChange={(e) => setForm({ ...form, name: e.target.value })} />
            </label>
            <label>
              Email
              <input
                name="email"
                type="email"
                value={form.email}
                onChange={(e) => setForm({ ...form, email: e.target.value })}
              />
            </label>
            <label>
              Password
              <input
                name="password"
                type="password"
                autoComplete="new-password"
                value={form.password}
                onChange={(e) => setForm({ ...form, password: e.target.value })}
              />
            </label>
            <label>
              Role
              <select name="role" value={form.role} onChange={(e) => setForm({ ...form, role: e.target.value })}>
                {roles.map((role) => (
                  <option key={role}>{role}</option>
                ))}
              </select>
            </label>
            <FormFooter problems={problems} error={formError} submitLabel="Create user">
              {notice && <p role="status">{notice}</p>}
            </FormFooter>
          </fieldset>
        </form>
      )}
    </>
  );
}

export function Roles() {
  const [roles, setRoles] = useState<Role[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  useEffect(() => {
    request<(Role | string)[]>("/roles")
      .then(async (found) => {
        const detailed = await Promise.all(
          (found ?? []).map(async (role) => {
            const name = roleName(role);
            if (typeof role !== "string" && role.permissions) return role;
            try {
              const detail = await request<Role | { permissions?: Role["permissions"] } | Role["permissions"]>(
                `/roles/${encodeURIComponent(name)}`,
              );
              const permissions = Array.isArray(detail) ? detail : detail?.permissions;
              return { name, permissions: permissions ?? [] };
            } catch {
              return { name, permissions: [] };
            }
          }),
        );
        setRoles(detailed);
      })
      .catch(setError);
  }, []);
  return (
    <>
      <PageHeader title="Roles" />
      <p className="muted">root may change everything; guest may read.</p>
      <ErrorBanner error={error} />
      <Table<Role & { id?: number }>
        caption="Roles"
        rows={roles ?? undefined}
        rowKey={(r) => roleName(r)}
        columns={[
          { header: "Role", cell: (r) => roleName(r) },
          { header: "Description", cell: (r) => r.description || "–" },
          {
            header: "Permissions",
            cell: (r) => (r.permissions ?? []).map((p) => `${p.object}: ${p.action}`).join(", ") || "–",
          },
        ]}
      />
    </>
  );
}

const TOKEN_SCOPES = ["job", "cluster", "application", "user"];

export function Tokens() {
  const { userId } = useSession();
  const tokens = usePagedList<Token>("/personal-access-tokens");
  const [form, setForm] = useState({ name: "", bio: "", days: "30", scopes: ["job"] as string[] });
  const [problems, setProblems] = useState<string[]>([]);
  const [formError, setFormError] = useState<unknown>(null);
  const [created, setCreated] = useState<Token | null>(null);

  const submit = (event: FormEvent) => {
    event.preventDefault();
    const found: string[] = [];
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(form.name)) found.push("Name: letters, digits, '.', '_' or '-'.");
    const days = Number(form.days);
    if (!/^\d+$/.test(form.days) || days < 1 || days > 3650) found.push("Expires in: 1 to 3650 days.");
    if (form.scopes.length === 0) found.push("Choose at least one scope.");
    setProblems(found);
    if (found.length) return;
    setFormError(null);
    setCreated(null);
    const expiredAt = new Date(Date.now() + days * 86400 * 1000).toISOString();
    request<Token>("/personal-access-tokens", {
      method: "POST",
      body: { name: form.name, bio: form.bio, scopes: form.scopes, expired_at: expiredAt, user_id: userId ?? undefined },
    })
      .then((token) => {
        setCreated(token);
        setForm({ ...form, name: "", bio: "" });
        tokens.reload();
      })
      .catch(setFormError);
  };

  return (
    <>
      <PageHeader title="Access tokens" />
      <p className="muted">Personal access tokens call the Open API (/oapi/v1), for example from Harbor.</p>
      {created?.token && (
        <div className="token-once" role="status">
          <p>
            <strong>Copy the token now; it is not shown again.</strong>
          </p>
          <code data-testid="new-token">{created.token}</code>
          <div className="actions">
            <button type="button" onClick={() => void navigator.clipboard?.writeText(created.token ?? "")}>
              Copy
            </button>
            <button type="button" onClick={() => setCreated(null)}>
              Done
            </button>
          </div>
        </div>
      )}
      <PagedTable<Token>
        list={tokens}
        caption="Personal access tokens"
        empty="No tokens."
        columns={[
          { header: "Name", cell: (t) => t.name },
          { header: "Scopes", cell: (t) => (t.scopes ?? []).join(", ") },
          { header: "State", cell: (t) => <StateBadge state={t.state} /> },
          { header: "Expires", cell: (t) => formatTime(t.expired_at) },
          { header: "Created", cell: (t) => formatTime(t.created_at) },
          {
            header: "Actions",
            cell: (t) => (
              <span className="row-actions">
                {t.state !== "inactive" && (
                  <DeleteButton
                    label="Revoke"
                    method="PATCH"
                    body={{ state: "inactive" }}
                    path={`/personal-access-tokens/${t.id}`}
                    question={`Revoke token "${t.name}"? Anything using it stops working.`}
                    reload={tokens.reload}
                  />
                )}
                <DeleteButton
                  path={`/personal-access-tokens/${t.id}`}
                  question={`Delete token "${t.name}"?`}
                  reload={tokens.reload}
                />
              </span>
            ),
          },
        ]}
      />
      <form className="form" onSubmit={submit} noValidate aria-label="Create token">
        <fieldset>
          <legend>Create token</legend>
          <label>
            Name
            <input name="name" value={form.name} onChange={(e) => setForm({ ...form, name: e.target.value })} />
          </label>
          <label>
            Description
            <input name="bio" value={form.bio} onChange={(e) => setForm({ ...form, bio: e.target.value })} />
          </label>
          <label>
            Expires in (days)
            <input
              name="days"
              inputMode="numeric"
              value={form.days}
              onChange={(e) => setForm({ ...form, days: e.target.value })}
            />
          </label>
          <CheckboxGroup<string>
            label="Scopes"
            options={TOKEN_SCOPES.map((scope) => [scope, scope])}
            value={form.scopes}
            onChange={(scopes) => setForm({ ...form, scopes })}
          />
          <FormFooter problems={problems} error={formError} submitLabel="Create token" />
        </fieldset>
      </form>
    </>
  );
}

export function AuditLog() {
  const [actor, setActor] = useState("");
  const [applied, setApplied] = useState("");
  const audits = usePagedList<Audit>("/audits", { actor_name: applied }, 20);
  return (
    <>
      <PageHeader title="Audit log">
        <form
          className="actions"
          onSubmit={(e) => {
            e.preventDefault();
            setApplied(actor.trim());
            audits.setPage(1);
          }}
        >
          <label className="inline">
            Actor
            <input value={actor} onChange={(e) => setActor(e.target.value)} />
          </label>
          <button type="submit">Filter</button>
        </form>
      </PageHeader>
      <PagedTable<Audit>
        list={audits}
        caption="Audit log"
        empty="No changes recorded."
        columns={[
          { header: "When", cell: (a) => formatTime(a.operated_at ?? a.created_at) },
          { header: "Actor", cell: (a) => (a.actor_name ? `${a.actor_name} (${a.actor_type ?? "?"})` : (a.actor_type ?? "–")) },
          { header: "Operation", cell: (a) => a.operation ?? "–" },
          { header: "Path", cell: (a) => <code>{a.path}</code> },
          { header: "Status", cell: (a) => a.status_code ?? "–" },
          { header: "State", cell: (a) => <StateBadge state={a.state} /> },
        ]}
      />
    </>
  );
}
