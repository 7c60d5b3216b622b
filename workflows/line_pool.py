"""The per-business line pool, as plain state the gate workflow drives and unit tests can exercise."""

from __future__ import annotations

from dataclasses import dataclass

from workflows.messages import GateHolder, LineDemand, LineGrant, LineRecall


@dataclass
class PoolMessages:
    """What the gate must tell runs after a change: new grants and changed recall targets."""

    grants: list[tuple[str, LineGrant]]
    recalls: list[tuple[str, LineRecall]]


class LinePool:
    """A counting semaphore over a business's lines, fair across runs.

    Lines are reserved here before a grant is sent, so the sum of lines held never exceeds the cap.
    A run keeps its lines between calls; when another run waits, runs above their fair share are
    asked to give lines back as their calls end.
    """

    def __init__(self, cap: int, holders: list[GateHolder], seq: int = 0) -> None:
        self.cap = cap
        # Insertion order is arrival order, which breaks ties fairly.
        self.holders: dict[str, GateHolder] = {h.run_workflow_id: h for h in holders}
        # One sequence for every message the gate sends, so a run can drop duplicates even if
        # the gate forgot it in between.
        self.seq = seq

    @property
    def held(self) -> int:
        """Lines currently granted to runs."""
        return sum(h.held for h in self.holders.values())

    def apply(self, demand: LineDemand) -> bool:
        """Apply a run's demand; a duplicate or stale one (by sequence) changes nothing."""
        holder = self.holders.get(demand.run_workflow_id)
        if holder is None:
            holder = self.holders[demand.run_workflow_id] = GateHolder(demand.run_workflow_id)
        if demand.seq <= holder.last_seq:
            return False
        holder.last_seq = demand.seq
        holder.held = max(0, holder.held - demand.release)
        holder.want = max(0, demand.want)
        self.cap = max(0, demand.cap)
        if demand.done:
            del self.holders[demand.run_workflow_id]
        return True

    def reclaim(self, run_workflow_id: str) -> int:
        """Take back every line of a run that can no longer use them; returns how many."""
        holder = self.holders.pop(run_workflow_id, None)
        return holder.held if holder else 0

    def fair_shares(self) -> dict[str, int]:
        """Water-filling: one line at a time, round-robin in arrival order, up to each run's want."""
        shares = dict.fromkeys(self.holders, 0)
        left = self.cap
        while left > 0:
            progressed = False
            for run_id, holder in self.holders.items():
                if left > 0 and shares[run_id] < holder.want:
                    shares[run_id] += 1
                    left -= 1
                    progressed = True
            if not progressed:
                break
        return shares

    def rebalance(self) -> PoolMessages:
        """Grant free lines (neediest run first) and set recall targets while someone waits."""
        shares = self.fair_shares()
        order = {run_id: i for i, run_id in enumerate(self.holders)}
        granted: dict[str, int] = {}
        free = self.cap - self.held
        while free > 0:
            wanting = [h for h in self.holders.values() if h.held < h.want]
            if not wanting:
                break
            holder = min(
                wanting, key=lambda h: (h.held - shares[h.run_workflow_id], order[h.run_workflow_id])
            )
            holder.held += 1
            granted[holder.run_workflow_id] = granted.get(holder.run_workflow_id, 0) + 1
            free -= 1

        grants = []
        for run_id, count in granted.items():
            self.seq += 1
            grants.append((run_id, LineGrant(seq=self.seq, count=count)))

        someone_waits = any(h.held < shares[h.run_workflow_id] for h in self.holders.values())
        recalls = []
        for run_id, holder in self.holders.items():
            target = shares[run_id] if someone_waits and holder.held > shares[run_id] else None
            if target != holder.recall_sent:
                holder.recall_sent = target
                self.seq += 1
                recalls.append((run_id, LineRecall(seq=self.seq, hold_at_most=target)))
        return PoolMessages(grants=grants, recalls=recalls)

    def snapshot(self) -> list[GateHolder]:
        """Holders to carry across continue-as-new; runs that hold and want nothing are dropped."""
        return [h for h in self.holders.values() if h.held or h.want]
