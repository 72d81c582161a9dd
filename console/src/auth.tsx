import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from "react";
import { getToken, onSignedOut, request, setToken } from "./api";
import type { User } from "./types";

const USER_KEY = "dragonfly.console.user";

export interface Session {
  token: string | null;
  name: string | null;
  userId: number | null;
  roles: string[];
  signIn: (name: string, password: string) => Promise<void>;
  signOut: () => Promise<void>;
}

const SessionContext = createContext<Session | null>(null);

interface StoredUser {
  id: number | null;
  name: string;
}

function readStoredUser(): StoredUser | null {
  try {
    const value: unknown = JSON.parse(window.localStorage.getItem(USER_KEY) ?? "null");
    if (value && typeof value === "object" && typeof (value as StoredUser).name === "string") return value as StoredUser;
  } catch {
    // A value from another version: ask the manager again.
  }
  return null;
}

export function SessionProvider({ children }: { children: ReactNode }) {
  const [token, setTokenState] = useState<string | null>(() => getToken());
  const [user, setUser] = useState<StoredUser | null>(() => readStoredUser());
  const [roles, setRoles] = useState<string[]>([]);

  useEffect(
    () =>
      onSignedOut(() => {
        setTokenState(null);
        setRoles([]);
      }),
    [],
  );

  // Who the token belongs to, and so what the console lets them try (the manager decides in the end).
  useEffect(() => {
    if (!token) return;
    let live = true;
    request<User>("/users/me")
      .then((me) => {
        if (!live || !me) return;
        setRoles(me.roles ?? []);
        const stored = { id: me.id, name: me.name };
        window.localStorage.setItem(USER_KEY, JSON.stringify(stored));
        setUser(stored);
      })
      .catch(() => undefined);
    return () => {
      live = false;
    };
  }, [token]);

  const signIn = useCallback(async (name: string, password: string) => {
    const answer = await request<{ token?: string; user_id?: number }>("/users/signin", {
      method: "POST",
      body: { name, password },
    });
    if (!answer?.token) throw new Error("The manager answered the sign-in without a token.");
    setToken(answer.token);
    const stored = { id: answer.user_id ?? null, name };
    window.localStorage.setItem(USER_KEY, JSON.stringify(stored));
    setUser(stored);
    setRoles([]);
    setTokenState(answer.token);
  }, []);

  const signOut = useCallback(async () => {
    try {
      await request("/users/signout", { method: "POST" });
    } catch {
      // Signing out here is what matters; the session expires on the manager by itself.
    }
    setToken(null);
    window.localStorage.removeItem(USER_KEY);
    setTokenState(null);
    setUser(null);
    setRoles([]);
  }, []);

  const value = useMemo<Session>(
    () => ({ token, name: user?.name ?? null, userId: user?.id ?? null, roles, signIn, signOut }),
    [token, user, roles, signIn, signOut],
  );
  return <SessionContext.Provider value={value}>{children}</SessionContext.Provider>;
}

export function useSession(): Session {
  const session = useContext(SessionContext);
  if (!session) throw new Error("useSession outside SessionProvider");
  return session;
}

/** Whether the signed-in user may change things: root does, a guest only reads. */
export function useCanEdit(): boolean {
  const { roles } = useSession();
  return roles.includes("root");
}
