import { Navigate, Route, Routes, useLocation } from "react-router-dom";
import { useSession } from "./auth";
import { PageHeader } from "./components";
import Layout from "./Layout";
import { AuditLog, Roles, Tokens, Users } from "./pages/Accounts";
import { SchedulerClusterEdit, SchedulerClusterList, SeedPeerClusterEdit, SeedPeerClusterList } from "./pages/Clusters";
import { Hosts, Schedulers, SeedPeers } from "./pages/Instances";
import { JobCreate, JobDetail, JobList } from "./pages/Jobs";
import Overview from "./pages/Overview";
import SignIn from "./pages/SignIn";
import SwarmView from "./pages/Swarm";

function RequireSession({ children }: { children: React.ReactNode }) {
  const { token } = useSession();
  const location = useLocation();
  if (!token) return <Navigate to="/signin" replace state={{ from: location.pathname + location.search }} />;
  return <>{children}</>;
}

function NotFound() {
  return (
    <>
      <PageHeader title="Not found" />
      <p>There is no page at this address.</p>
    </>
  );
}

export default function App() {
  return (
    <Routes>
      <Route path="/signin" element={<SignIn />} />
      <Route
        element={
          <RequireSession>
            <Layout />
          </RequireSession>
        }
      >
        <Route index element={<Overview />} />
        <Route path="scheduler-clusters" element={<SchedulerClusterList />} />
        <Route path="scheduler-clusters/:id" element={<SchedulerClusterEdit />} />
        <Route path="seed-peer-clusters" element={<SeedPeerClusterList />} />
        <Route path="seed-peer-clusters/:id" element={<SeedPeerClusterEdit />} />
        <Route path="schedulers" element={<Schedulers />} />
        <Route path="seed-peers" element={<SeedPeers />} />
        <Route path="hosts" element={<Hosts />} />
        <Route path="jobs" element={<JobList />} />
        <Route path="jobs/new" element={<JobCreate />} />
        <Route path="jobs/:id" element={<JobDetail />} />
        <Route path="swarm" element={<SwarmView />} />
        <Route path="users" element={<Users />} />
        <Route path="roles" element={<Roles />} />
        <Route path="tokens" element={<Tokens />} />
        <Route path="audit" element={<AuditLog />} />
        <Route path="*" element={<NotFound />} />
      </Route>
    </Routes>
  );
}
