import { useEffect, useState, type FormEvent, type ReactNode } from "react";
import { Link, useNavigate, useParams } from "react-router-dom";
import { request } from "./api";
import { useCanEdit } from "./auth";
import { ErrorBanner, FormFooter, PageHeader } from "./components";

/** How one kind of resource is edited: where it lives, its form's fields, and the checks run before sending. */
export interface ResourceFormSpec<R, F> {
  path: string;
  empty: F;
  toForm: (row: R) => F;
  validate: (form: F) => string[];
  toBody: (form: F) => unknown;
}

/** The state of a create-or-edit page at `<path>/new` or `<path>/:id`: load, check, send, go back to the list. */
export function useResourceForm<R, F extends object>(spec: ResourceFormSpec<R, F>) {
  const { id } = useParams();
  const creating = id === undefined || id === "new";
  const canEdit = useCanEdit();
  const navigate = useNavigate();
  const [form, setForm] = useState<F>(spec.empty);
  const [loaded, setLoaded] = useState<R | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [problems, setProblems] = useState<string[]>([]);
  const [busy, setBusy] = useState(false);
  const { path, toForm } = spec;

  useEffect(() => {
    if (creating) return;
    request<R>(`${path}/${id}`)
      .then((row) => {
        setLoaded(row);
        setForm(toForm(row));
      })
      .catch(setError);
  }, [creating, id, path, toForm]);

  const submit = (event: FormEvent) => {
    event.preventDefault();
    const found = spec.validate(form);
    setProblems(found);
    if (found.length > 0) return;
    setBusy(true);
    setError(null);
    request(creating ? path : `${path}/${id}`, { method: creating ? "POST" : "PATCH", body: spec.toBody(form) })
      .then(() => navigate(path))
      .catch((caught: unknown) => {
        setError(caught);
        setBusy(false);
      });
  };

  /** Props of a text input bound to one string field of the form. */
  const field = (key: keyof F) => ({
    value: String(form[key]),
    onChange: (event: { target: { value: string } }) => setForm({ ...form, [key]: event.target.value }),
    disabled: !canEdit,
  });

  return { id, creating, canEdit, form, setForm, loaded, error, problems, busy, submit, field };
}

interface EditState {
  creating: boolean;
  canEdit: boolean;
  loaded: unknown;
  error: unknown;
  problems: string[];
  busy: boolean;
  submit: (event: FormEvent) => void;
}

/** The page around a resource form: header with the way back, a loading gate, the footer, what follows. */
export function EditPage({
  title,
  back,
  state,
  children,
  after,
}: {
  title: string;
  back: [string, string];
  state: EditState;
  children: ReactNode;
  after?: ReactNode;
}) {
  const { creating, canEdit, loaded, error, problems, busy, submit } = state;
  return (
    <>
      <PageHeader title={title}>
        <Link className="button" to={back[0]}>
          {back[1]}
        </Link>
      </PageHeader>
      {!canEdit && <p className="muted">You can read this; only root can change it.</p>}
      {!creating && !loaded ? (
        error ? (
          <ErrorBanner error={error} />
        ) : (
          <p className="muted">Loading…</p>
        )
      ) : (
        <form className="form" onSubmit={submit} noValidate aria-label={title}>
          {children}
          <FormFooter
            problems={problems}
            error={error}
            busy={busy}
            submitLabel={canEdit ? (creating ? "Create" : "Save") : null}
          />
        </form>
      )}
      {!creating && loaded !== null && after}
    </>
  );
}
