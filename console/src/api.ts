// A small client of the manager's REST API (/api/v1): bearer token, JSON bodies, errors in words, paginated lists.

const TOKEN_KEY = "dragonfly.console.token";

export class ApiError extends Error {
  readonly status: number;

  constructor(status: number, message: string) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

export interface Page<T> {
  items: T[];
  page: number;
  perPage: number;
  // Known when the manager sends X-Total-Count or a Link header with rel="last".
  total: number | null;
  hasNext: boolean;
}

type Listener = () => void;
const signedOutListeners = new Set<Listener>();

export function getToken(): string | null {
  return window.localStorage.getItem(TOKEN_KEY);
}

export function setToken(token: string | null): void {
  if (token === null) window.localStorage.removeItem(TOKEN_KEY);
  else window.localStorage.setItem(TOKEN_KEY, token);
}

/** Call `listener` whenever the manager refuses the session (401): the app goes back to the sign-in page. */
export function onSignedOut(listener: Listener): () => void {
  signedOutListeners.add(listener);
  return () => signedOutListeners.delete(listener);
}

/** Turn an error body of any of the manager's shapes into one sentence. */
export function describeError(status: number, body: unknown, statusText = ""): string {
  const fallback = `${status} ${statusText || httpReason(status)}`.trim();
  if (body === null || body === undefined || body === "") return fallback;
  if (typeof body === "string") return body;
  if (typeof body !== "object") return fallback;
  const record = body as Record<string, unknown>;
  for (const key of ["message", "error", "errors", "detail"]) {
    const value = record[key];
    if (value === undefined || value === null) continue;
    if (typeof value === "string") return value;
    if (Array.isArray(value)) {
      // FastAPI/pydantic validation: [{loc: [...], msg: "..."}]
      const parts = value.map((item) => {
        if (typeof item === "string") return item;
        if (item && typeof item === "object") {
          const entry = item as { loc?: unknown[]; msg?: string; message?: string };
          const where = Array.isArray(entry.loc) ? entry.loc.filter((p) => p !== "body").join(".") : "";
          const what = entry.msg ?? entry.message ?? JSON.stringify(item);
          return where ? `${where}: ${what}` : what;
        }
        return String(item);
      });
      return parts.join("; ");
    }
    return JSON.stringify(value);
  }
  return fallback;
}

function httpReason(status: number): string {
  const reasons: Record<number, string> = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
  };
  return reasons[status] ?? "";
}

export interface RequestOptions {
  method?: string;
  body?: unknown;
  query?: Record<string, string | number | boolean | undefined | null>;
  signal?: AbortSignal;
}

async function send(path: string, options: RequestOptions = {}): Promise<Response> {
  const url = new URL(`/api/v1${path}`, window.location.origin);
  for (const [key, value] of Object.entries(options.query ?? {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, String(value));
  }
  const headers: Record<string, string> = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  let body: string | undefined;
  if (options.body !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(options.body);
  }
  let response: Response;
  try {
    response = await fetch(url, { method: options.method ?? "GET", headers, body, signal: options.signal });
  } catch (error) {
    if (error instanceof DOMException && error.name === "AbortError") throw error;
    throw new ApiError(0, "The manager cannot be reached; check that it is running.");
  }
  if (!response.ok) {
    let parsed: unknown;
    const text = await response.text();
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      parsed = text;
    }
    if (response.status === 401 && !path.startsWith("/users/signin")) {
      setToken(null);
      signedOutListeners.forEach((listener) => listener());
    }
    throw new ApiError(response.status, describeError(response.status, parsed, response.statusText));
  }
  return response;
}

export async function request<T>(path: string, options: RequestOptions = {}): Promise<T> {
  const response = await send(path, options);
  if (response.status === 204) return undefined as T;
  const text = await response.text();
  return (text ? JSON.parse(text) : undefined) as T;
}

/** Read the number of the last page from an RFC 5988 Link header. */
export function lastPageFromLink(link: string | null): number | null {
  if (!link) return null;
  for (const part of link.split(",")) {
    if (!/rel="?last"?/.test(part)) continue;
    const match = /<([^>]+)>/.exec(part);
    if (!match?.[1]) continue;
    const page = new URL(match[1], "http://x").searchParams.get("page");
    if (page !== null && /^\d+$/.test(page)) return Number(page);
  }
  return null;
}

export async function list<T>(
  path: string,
  page: number,
  perPage: number,
  query: RequestOptions["query"] = {},
  signal?: AbortSignal,
): Promise<Page<T>> {
  const response = await send(path, { query: { ...query, page, per_page: perPage }, signal });
  const body: unknown = await response.json();
  // Either a bare array (Dragonfly) or {items|data, total}.
  let items: T[];
  let total: number | null = null;
  if (Array.isArray(body)) items = body as T[];
  else {
    const record = (body ?? {}) as { items?: T[]; data?: T[]; total?: number };
    items = record.items ?? record.data ?? [];
    if (typeof record.total === "number") total = record.total;
  }
  const header = response.headers.get("X-Total-Count");
  if (total === null && header !== null && /^\d+$/.test(header)) total = Number(header);
  const lastPage = lastPageFromLink(response.headers.get("Link"));
  if (total === null && lastPage !== null && lastPage === page) total = (page - 1) * perPage + items.length;
  const hasNext =
    total !== null ? page * perPage < total : lastPage !== null ? page < lastPage : items.length === perPage;
  return { items, page, perPage, total, hasNext };
}
