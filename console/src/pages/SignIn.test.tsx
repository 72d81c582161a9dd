import { cleanup, fireEvent, render, screen, waitFor } from "@testing-library/react";
import { MemoryRouter, Route, Routes } from "react-router-dom";
import { afterEach, describe, expect, it, vi } from "vitest";
import { getToken, setToken } from "../api";
import { SessionProvider } from "../auth";
import SignIn from "./SignIn";

afterEach(() => {
  cleanup();
  vi.unstubAllGlobals();
  setToken(null);
});

function renderSignIn() {
  render(
    <MemoryRouter initialEntries={["/signin"]}>
      <SessionProvider>
        <Routes>
          <Route path="/signin" element={<SignIn />} />
          <Route path="/" element={<p>home</p>} />
        </Routes>
      </SessionProvider>
    </MemoryRouter>,
  );
}

describe("SignIn", () => {
  it("asks for both fields before sending", () => {
    const fetch = vi.fn();
    vi.stubGlobal("fetch", fetch);
    renderSignIn();
    fireEvent.click(screen.getByRole("button", { name: "Sign in" }));
    expect(screen.getByRole("alert").textContent).toBe("Enter a user name and a password.");
    expect(fetch).not.toHaveBeenCalled();
  });

  it("shows the manager's refusal and keeps no token", async () => {
    vi.stubGlobal("fetch", vi.fn(async () => new Response('{"message":"wrong name or password"}', { status: 401 })));
    renderSignIn();
    fireEvent.change(screen.getByLabelText("User name"), { target: { value: "root" } });
    fireEvent.change(screen.getByLabelText("Password"), { target: { value: "nope" } });
    fireEvent.click(screen.getByRole("button", { name: "Sign in" }));
    await waitFor(() => expect(screen.getByRole("alert").textContent).toBe("wrong name or password"));
    expect(getToken()).toBeNull();
  });

  it("stores the token and goes home", async () => {
    vi.stubGlobal("fetch", vi.fn(async () => new Response('{"token":"a.b.c"}', { status: 200 })));
    renderSignIn();
    fireEvent.change(screen.getByLabelText("User name"), { target: { value: "root" } });
    fireEvent.change(screen.getByLabelText("Password"), { target: { value: "dragonfly" } });
    fireEvent.click(screen.getByRole("button", { name: "Sign in" }));
    await waitFor(() => expect(screen.getByText("home")).toBeTruthy());
    expect(getToken()).toBe("a.b.c");
  });
});
