import { useState } from "react";
import { NavLink, Outlet } from "react-router-dom";
import { useSession } from "./auth";

const LINKS: [string, string][] = [
  ["/", "Overview"],
  ["/scheduler-clusters", "Scheduler clusters"],
  ["/seed-peer-clusters", "Seed peer clusters"],
  ["/schedulers", "Schedulers"],
  ["/seed-peers", "Seed peers"],
  ["/hosts", "Hosts"],
  ["/jobs", "Preheat jobs"],
  ["/swarm", "Swarm view"],
  ["/users", "Users"],
  ["/roles", "Roles"],
  ["/tokens", "Access tokens"],
  ["/audit", "Audit log"],
];

export default function Layout() {
  const { name, roles, signOut } = useSession();
  const [open, setOpen] = useState(false);
  return (
    <div className="layout">
      <header className="topbar">
        <button
          type="button"
          className="menu-toggle"
          aria-expanded={open}
          aria-controls="sidebar"
          onClick={() => setOpen(!open)}
        >
          Menu
        </button>
        <span className="brand">Dragonfly</span>
        <span className="user">
          {name ?? "signed in"}
          {roles.length > 0 ? ` (${roles.join(", ")})` : ""}
        </span>
        <button type="button" onClick={() => void signOut()}>
          Sign out
        </button>
      </header>
      <nav id="sidebar" className={open ? "sidebar open" : "sidebar"} aria-label="Main">
        <ul>
          {LINKS.map(([to, label]) => (
            <li key={to}>
              <NavLink to={to} end={to === "/"} onClick={() => setOpen(false)}>
                {label}
              </NavLink>
            </li>
          ))}
        </ul>
      </nav>
      <main className="content">
        <Outlet />
      </main>
    </div>
  );
}
