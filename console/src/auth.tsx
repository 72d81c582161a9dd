import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from "react";
import { getToken, onSignedOut, request, setToken } from "./api";

const NAME_KEY = "dragonfly.console.user";

export interface Session {
  token: string | null;
  name: string | null;
  userId: number | null;
  roles: string[];
  signIn: (name: string, password: string) => Promise<void>;
  signOut: () => Promise<void>;
}

const SessionContext = createContext<Session | null>(null);

interface Claims {
  sub?: string | number;
  id?: number;
  user_id?: number;
  name?: string;
  roles?: string[];
  role?: string;
}

/** Read the claims of a JWT without checking it (the manager checks it; the console only labels things). */
export function readClaims(token: string | null): Claims {
  if (!token) return {};
  const part = token.split(".")[1];
  if (!part) return {};
  try {
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "="));
    const value: unknown = JSON.parse(json);
    return value && typeof value === "object" ? (value as Claims) : {};
  } catch {
    return {};
  }
}

export function SessionProvider({ children }: { children: ReactNode }) {
  const [token, setTokenState] = useState<string | null>(() => getToken());
  const [name, setName] = useState<string | null>(() => window.localStorage.getItem(NAME_KEY));
  const [fetchedRoles, setFetchedRoles] = useState<string[] | null>(null);

  useEffect(
    () =>
      onSignedOut(() => {
        setTokenState(null);
        setFetchedRoles(null);
      }),
    [],
  );

  const claims = useMemo(() => readClaims(token), [token]);
  const userId = useMemo(() => {
    const raw = claims.user_id ?? claims.id ?? claims.sub;
    const value = typeof raw === "string" ? Number(raw) : raw;
    return typeof value === "number" && Number.isFinite(value) ? value : null;
  }, [claims]);

  // Roles from the token when it carries them; otherwise asked once from the manager.
  useEffect(() => {
    if (!token || userId === null || claims.roles || claims.role) return;
    let live = true;
    request<unknown>(`/users/${userId}/roles`)
      .then((roles) => {
        if (live && Array.isArray(roles)) setFetchedRoles(roles.map((r) => (typeof r === "string" ? r : String(r))));
      })
      .catch(() => undefined);
    return () => {
      live = false;
    };
  }, [token, userId, claims]);

  const roles = useMemo(
    () => claims.roles ?? (claims.role ? [claims.role] : (fetchedRoles ?? [])),
    [claims, fetchedRoles],
  );

  const signIn = useCallback(async (user: string, password: string) => {
    const answer = await request<{ token?: string; access_token?: string }>("/users/signin", {
      method: "POST",
      body: { name: user, password },
    });
    const value = answer?.token ?? answer?.access_token;
    if (!value) throw new Error("The manager answered the sign-in without a token.");
    setToken(value);
    window.localStorage.setItem(NAME_KEY, user);
    setName(user);
    setFetchedRoles(null);
    setTokenState(value);
  }, []);

  const signOut = useCallback(async () => {
    try {
      await request("/users/signout", { method: "POST" });
    } catch {
      // Signing out locally is what matters; the token expires on its own.
    }
    setToken(null);
    window.localStorage.removeItem(NAME_KEY);
    setTokenState(null);
    setName(null);
    setFetchedRoles(null);
  }, []);

  const value = useMemo<Session>(
    () => ({ token, name: claims.name ?? name, userId, roles, signIn, signOut }),
    [token, claims, name, userId, roles, signIn, signOut],
  );
  return <SessionContext.Provider value={value}>{children}</SessionContext.Provider>;
}

export function useSession(): Session {
  const session = useContext(SessionContext);
  if (!session) throw new Error("useSession outside SessionProvider");
  return session;
}

/** Whether the signed-in user may change things (root); a guest only reads. Unknown roles are allowed to try. */
export function useCanEdit(): boolean {
  const { roles } = useSession();
  if (roles.length === 0) return true;
  return roles.some((role) => role === "root" || role === "admin");
}
