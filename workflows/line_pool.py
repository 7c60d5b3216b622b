"""The per-business line pool, as plain state the gate workflow drives and unit tests can exercise."""

from __future__ import annotations

from dataclasses import dataclass

from contracts.messages import GateHolder, LineDemand, LineGrant, LineRecall


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

    def __init__(
        self,
        cap: int,
        holders: list[GateHolder],
        seq: int = 0,
        gate_run: str = "",
        reserved: dict[str, int] | None = None,
        reset_from: str = "",
    ) -> None:
        self.cap = cap
        # Insertion order is arrival order, which breaks ties fairly.
        self.holders: dict[str, GateHolder] = {h.run_workflow_id: h for h in holders}
        # One sequence for every message the gate sends, so a run can drop duplicates even if
        # the gate forgot it in between.
        self.seq = seq
        # This gate execution; its grants carry it, so a run can tell a new execution from an old.
        self.gate_run = gate_run
        # The execution this one was reset from, if an operator reset the gate: the demands it copied
        # name that execution's grants as seen, and are counted as that execution counted them.
        self.reset_from = reset_from
        # Lines leased to calls of runs whose workflows are gone: not grantable until they end.
        self.reserved: dict[str, int] = dict(reserved or {})
        # Grants this execution sent each run, newest last, until the run says it has them.
        self._sent: dict[str, list[tuple[int, int]]] = {}

    @property
    def held(self) -> int:
        """Lines currently granted to runs, or held by calls of runs that are gone."""
        return sum(h.held for h in self.holders.values()) + sum(self.reserved.values())

    def apply(self, demand: LineDemand, convergent: bool = False) -> bool:
        """Apply a run's demand; a duplicate or stale one (by sequence) changes nothing.

        `convergent` (gates since `gate-converges`): a demand from a run the gate has not heard of,
        from a new execution of the run (reset, continued as new), or that says the run has just
        heard from this gate execution, sets what the run holds from its own count, plus the grants
        still on their way to it; others change it by what they give back."""
        holder = self.holders.get(demand.run_workflow_id)
        new = holder is None
        if holder is None:
            holder = self.holders[demand.run_workflow_id] = GateHolder(demand.run_workflow_id)
        absolute = convergent and demand.held is not None
        new_epoch = absolute and demand.epoch != holder.epoch
        if demand.seq <= holder.last_seq and not new_epoch:
            return False
        holder.last_seq = demand.seq
        if absolute and (new or new_epoch or demand.resync):
            holder.held = max(0, demand.held or 0) + self._on_their_way(demand)
            holder.epoch = demand.epoch
        else:
            holder.held = max(0, holder.held - demand.release)
            self._forget_seen(demand)
        holder.want = max(0, demand.want)
        self.cap = max(0, demand.cap)
        if demand.done:
            del self.holders[demand.run_workflow_id]
        return True

    def _on_their_way(self, demand: LineDemand) -> int:
        """Lines granted by this execution that the run had not applied when it sent the demand."""
        sent = self._forget_seen(demand)
        return sum(count for _, count in sent)

    def _forget_seen(self, demand: LineDemand) -> list[tuple[int, int]]:
        """Drop the grants the run says it has applied; returns those it has not."""
        sent = self._sent.get(demand.run_workflow_id, [])
        if demand.grant_seen_run and demand.grant_seen_run in (self.gate_run, self.reset_from):
            sent = [(seq, count) for seq, count in sent if seq > demand.grant_seen_seq]
            self._sent[demand.run_workflow_id] = sent
        return sent

    def reclaim(self, run_workflow_id: str) -> int:
        """Take back every line of a run that can no longer use them; returns how many."""
        holder = self.holders.pop(run_workflow_id, None)
        self._sent.pop(run_workflow_id, None)
        return holder.held if holder else 0

    def reserve(self, leased: dict[str, int]) -> None:
        """The lines still leased to calls of runs that are gone, as the database counts them now."""
        self.reserved = {run: count for run, count in leased.items() if count > 0}

    def hello(self, run_workflow_id: str) -> LineGrant:
        """A grant of nothing, to a run this gate execution has not heard from: it answers with
        what it holds."""
        self.seq += 1
        return LineGrant(seq=self.seq, count=0, gate_run=self.gate_run)

    def fair_shares(self) -> dict[str, int]:
        """Water-filling: one line at a time, round-robin in arrival order, up to each run's want."""
        shares = dict.fromkeys(self.holders, 0)
        left = self.cap - sum(self.reserved.values())
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
            grants.append((run_id, LineGrant(seq=self.seq, count=count, gate_run=self.gate_run)))
            if self.gate_run:
                self._sent.setdefault(run_id, []).append((self.seq, count))

        someone_waits = any(h.held < shares[h.run_workflow_id] for h in self.holders.values())
        recalls = []
        for run_id, holder in self.holders.items():
            target = shares[run_id] if someone_waits and holder.held > shares[run_id] else None
            if target != holder.recall_sent:
                holder.recall_sent = target
                self.seq += 1
                recalls.append(
                    (run_id, LineRecall(seq=self.seq, hold_at_most=target, gate_run=self.gate_run))
                )
        return PoolMessages(grants=grants, recalls=recalls)

    def forget_reserved(self) -> None:
        """Nothing held by gone runs (a pool carried by a gate that never looked)."""
        self.reserved = {}

    def snapshot(self) -> list[GateHolder]:
        """Holders to carry across continue-as-new; runs that hold and want nothing are dropped."""
        return [h for h in self.holders.values() if h.held or h.want]
