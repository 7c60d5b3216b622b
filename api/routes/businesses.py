"""Businesses: created by the operator with the admin token."""

from __future__ import annotations

from uuid import uuid4

from fastapi import APIRouter, status

from api.deps import AdminDep, BusinessDep, SessionDep
from api.schemas import BusinessCreate, BusinessCreated, BusinessPublic
from api.security import hash_api_key, new_api_key
from db.models import Business

router = APIRouter(prefix="/v1/businesses", tags=["businesses"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=BusinessCreated)
async def create_business(body: BusinessCreate, session: SessionDep, _admin: AdminDep) -> BusinessCreated:
    """Create a business and its API key (returned once, stored hashed)."""
    api_key = new_api_key()
    business = Business(
        id=uuid4().hex,
        name=body.name,
        caller_id=body.caller_id,
        max_concurrent_calls=body.max_concurrent_calls,
        timezone=body.timezone,
        calling_window=body.calling_window.model_dump() if body.calling_window else None,
        api_key_hash=hash_api_key(api_key),
    )
    session.add(business)
    await session.flush()
    return BusinessCreated(**_public(business).model_dump(), api_key=api_key)


@router.get("/me", response_model=BusinessPublic)
async def read_my_business(business: BusinessDep) -> BusinessPublic:
    """The business the API key belongs to."""
    return _public(business)


def _public(business: Business) -> BusinessPublic:
    return BusinessPublic(
        id=business.id,
        name=business.name,
        caller_id=business.caller_id,
        max_concurrent_calls=business.max_concurrent_calls,
        timezone=business.timezone,
    )
