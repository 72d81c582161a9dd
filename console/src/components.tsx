import { useCallback, useEffect, useId, useRef, useState, type ReactNode } from "react";
import { ApiError, list, request, type Page, type RequestOptions } from "./api";

export function useTitle(title: string): void {
  useEffect(() => {
    document.title = `${title} · Dragonfly console`;
  }, [title]);
}

export function errorText(error: unknown): string {
  if (error instanceof ApiError) return error.message;
  if (error instanceof Error) return error.message;
  return String(error);
}

export function ErrorBanner({ error }: { error: unknown }) {
  if (error === null || error === undefined) return null;
  return (
    <div className="error" role="alert">
      {errorText(error)}
    </div>
  );
}

export function PageHeader({ title, children }: { title: string; children?: ReactNode }) {
  useTitle(title);
  return (
    <header className="page-header">
      <h1>{title}</h1>
      <div className="actions">{children}</div>
    </header>
  );
}

export interface PagedList<T> {
  page: number;
  setPage: (page: number) => void;
  data: Page<T> | null;
  error: unknown;
  reload: () => void;
}

/** A paginated list from the manager; `reload()` fetches the current page again. */
export function usePagedList<T>(path: string, query: RequestOptions["query"] = {}, perPage = 10): PagedList<T> {
  const [page, setPage] = useState(1);
  const [data, setData] = useState<Page<T> | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [generation, setGeneration] = useState(0);
  const queryKey = JSON.stringify(query);

  useEffect(() => {
    const controller = new AbortController();
    list<T>(path, page, perPage, JSON.parse(queryKey) as RequestOptions["query"], controller.signal)
      .then((result) => {
        setData(result);
        setError(null);
      })
      .catch((caught: unknown) => {
        if (!(caught instanceof DOMException && caught.name === "AbortError")) setError(caught);
      });
    return () => controller.abort();
  }, [path, page, perPage, queryKey, generation]);

  const reload = useCallback(() => setGeneration((g) => g + 1), []);
  return { page, setPage, data, error, reload };
}

export function Pagination({
  page,
  data,
  setPage,
}: {
  page: number;
  data: Page<unknown> | null;
  setPage: (page: number) => void;
}) {
  if (!data || (page === 1 && !data.hasNext)) return null;
  const pages = data.total !== null ? Math.max(1, Math.ceil(data.total / data.perPage)) : null;
  return (
    <nav className="pagination" aria-label="Pagination">
      <button type="button" disabled={page <= 1} onClick={() => setPage(page - 1)}>
        Previous
      </button>
      <span aria-live="polite">
        Page {page}
        {pages !== null ? ` of ${pages}` : ""}
      </span>
      <button type="button" disabled={!data.hasNext} onClick={() => setPage(page + 1)}>
        Next
      </button>
    </nav>
  );
}

export interface Column<T> {
  header: string;
  cell: (row: T) => ReactNode;
}

export function Table<T extends { id?: number | string }>({
  columns,
  rows,
  caption,
  empty = "Nothing here yet.",
  rowKey,
}: {
  columns: Column<T>[];
  rows: T[] | undefined;
  caption: string;
  empty?: string;
  rowKey?: (row: T, index: number) => string | number;
}) {
  if (!rows) return <p className="muted">Loading…</p>;
  if (rows.length === 0) return <p className="muted">{empty}</p>;
  return (
    <div className="table-wrap">
      <table>
        <caption className="sr-only">{caption}</caption>
        <thead>
          <tr>
            {columns.map((column) => (
              <th key={column.header} scope="col">
                {column.header}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {rows.map((row, index) => (
            <tr key={rowKey ? rowKey(row, index) : (row.id ?? index)}>
              {columns.map((column) => (
                <td key={column.header} data-label={column.header}>
                  {column.cell(row)}
                </td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

/** A modal confirmation: `onConfirm` runs only after the user says yes; its error is shown in the dialog. */
export function ConfirmButton({
  label,
  question,
  confirmLabel = "Delete",
  onConfirm,
  disabled,
  className = "danger",
}: {
  label: string;
  question: string;
  confirmLabel?: string;
  onConfirm: () => Promise<void>;
  disabled?: boolean;
  className?: string;
}) {
  const dialog = useRef<HTMLDialogElement>(null);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const titleId = useId();
  return (
    <>
      <button
        type="button"
        className={className}
        disabled={disabled}
        onClick={() => {
          setError(null);
          dialog.current?.showModal();
        }}
      >
        {label}
      </button>
      <dialog ref={dialog} aria-labelledby={titleId}>
        <p id={titleId}>{question}</p>
        <ErrorBanner error={error} />
        <div className="actions">
          <button type="button" onClick={() => dialog.current?.close()}>
            Cancel
          </button>
          <button
            type="button"
            className={className}
            disabled={busy}
            onClick={() => {
              setBusy(true);
              onConfirm()
                .then(() => dialog.current?.close())
                .catch(setError)
                .finally(() => setBusy(false));
            }}
          >
            {confirmLabel}
          </button>
        </div>
      </dialog>
    </>
  );
}

export function StateBadge({ state }: { state: string | undefined | null }) {
  const value = (state ?? "unknown").toString();
  const kind = /^(active|success|succeeded|enable)$/i.test(value)
    ? "ok"
    : /^(inactive|failure|failed|disable|leave)$/i.test(value)
      ? "bad"
      : "neutral";
  return <span className={`badge ${kind}`}>{value}</span>;
}

export function formatBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

export function formatTime(value: string | null | undefined): string {
  if (!value) return "–";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? value : date.toLocaleString();
}

/** Split a comma- or newline-separated field into trimmed, non-empty entries. */
export function splitList(text: string): string[] {
  return text
    .split(/[\n,]/)
    .map((part) => part.trim())
    .filter((part) => part.length > 0);
}

/** One page of a list with its error and pager: the body of every list page. */
export function PagedTable<T extends { id?: number | string }>({
  list,
  ...table
}: {
  list: PagedList<T>;
  columns: Column<T>[];
  caption: string;
  empty?: string;
  rowKey?: (row: T, index: number) => string | number;
}) {
  return (
    <>
      <ErrorBanner error={list.error} />
      <Table<T> rows={list.data?.items} {...table} />
      <Pagination page={list.page} data={list.data} setPage={list.setPage} />
    </>
  );
}

/** A Delete (or other) button that asks first, sends DELETE to `path`, then reloads the list. */
export function DeleteButton({
  path,
  question,
  reload,
  label = "Delete",
  method = "DELETE",
  body,
}: {
  path: string;
  question: string;
  reload: () => void;
  label?: string;
  method?: string;
  body?: unknown;
}) {
  return (
    <ConfirmButton
      label={label}
      confirmLabel={label}
      question={question}
      onConfirm={async () => {
        await request(path, { method, body });
        reload();
      }}
    />
  );
}

/** A select that filters a list (its first option, "any", sends nothing). */
export function FilterSelect({
  label,
  value,
  options,
  onChange,
}: {
  label: string;
  value: string;
  options: [string, string][];
  onChange: (value: string) => void;
}) {
  return (
    <label className="inline">
      {label}
      <select value={value} onChange={(e) => onChange(e.target.value)}>
        <option value="">any</option>
        {options.map(([option, text]) => (
          <option key={option} value={option}>
            {text}
          </option>
        ))}
      </select>
    </label>
  );
}

/** Checkboxes that choose a subset of `options` ([value, label] pairs). */
export function CheckboxGroup<V extends string | number>({
  label,
  options,
  value,
  onChange,
  disabled = false,
  empty,
}: {
  label: string;
  options: [V, string][];
  value: V[];
  onChange: (value: V[]) => void;
  disabled?: boolean;
  empty?: string;
}) {
  return (
    <div role="group" aria-label={label}>
      <p className="muted">{label}</p>
      {options.length === 0 && empty && <p className="muted">{empty}</p>}
      {options.map(([option, text]) => (
        <label key={option} className="checkbox">
          <input
            type="checkbox"
            disabled={disabled}
            checked={value.includes(option)}
            onChange={(e) => onChange(e.target.checked ? [...value, option] : value.filter((v) => v !== option))}
          />
          {text}
        </label>
      ))}
    </div>
  );
}

/** The end of a form: what the checks found, the manager's error, anything else, and the submit button. */
export function FormFooter({
  problems,
  error,
  submitLabel,
  busy = false,
  children,
}: {
  problems: string[];
  error: unknown;
  submitLabel: string | null;
  busy?: boolean;
  children?: ReactNode;
}) {
  return (
    <>
      {problems.length > 0 && (
        <ul className="error" role="alert" aria-label="Problems in the form">
          {problems.map((problem) => (
            <li key={problem}>{problem}</li>
          ))}
        </ul>
      )}
      <ErrorBanner error={error} />
      {children}
      {submitLabel !== null && (
        <div className="actions">
          <button type="submit" className="primary" disabled={busy}>
            {submitLabel}
          </button>
        </div>
      )}
    </>
  );
}
