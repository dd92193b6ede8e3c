// Package uuidcodec makes pgx send github.com/google/uuid values, and
// pointers to them, as binary uuids. Without it pgx goes through the type's
// driver.Valuer: it formats every uuid as text and PostgreSQL parses it
// back, which cost about 8% of the engine's CPU under load (uuid arrays are
// formatted element by element).
package uuidcodec

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Register makes every connection of the pool cfg configures encode
// uuid.UUID values in binary (keeping any AfterConnect already set).
func Register(cfg *pgxpool.Config) {
	after := cfg.AfterConnect
	cfg.AfterConnect = func(ctx context.Context, conn *pgx.Conn) error {
		RegisterConn(conn)
		if after != nil {
			return after(ctx, conn)
		}
		return nil
	}
}

// RegisterConn does what Register does for one connection.
func RegisterConn(conn *pgx.Conn) {
	register(conn.TypeMap())
}

// register puts the uuid plan first in m's encode plans.
func register(m *pgtype.Map) {
	m.TryWrapEncodePlanFuncs = append([]pgtype.TryWrapEncodePlanFunc{tryWrapUUID}, m.TryWrapEncodePlanFuncs...)
}

// tryWrapUUID hands a uuid.UUID, or a *uuid.UUID (nil is NULL), on as the
// [16]byte pgx encodes natively. A pointer would otherwise go through its
// driver.Valuer: formatted as text, refused by the binary encoder, parsed
// back and encoded again.
func tryWrapUUID(value any) (pgtype.WrappedEncodePlanNextSetter, any, bool) {
	switch u := value.(type) {
	case uuid.UUID:
		return &uuidPlan{}, [16]byte(u), true
	case *uuid.UUID:
		// Plans are kept per type, and pgx plans an array's elements
		// with a zero one: a nil pointer must get this plan too.
		var b [16]byte
		if u != nil {
			b = *u
		}
		return &uuidPlan{}, b, true
	}
	return nil, nil, false
}

type uuidPlan struct{ next pgtype.EncodePlan }

func (p *uuidPlan) SetNext(next pgtype.EncodePlan) { p.next = next }

func (p *uuidPlan) Encode(value any, buf []byte) ([]byte, error) {
	switch u := value.(type) {
	case uuid.UUID:
		return p.next.Encode([16]byte(u), buf)
	case *uuid.UUID:
		if u == nil {
			return nil, nil // NULL
		}
		return p.next.Encode([16]byte(*u), buf)
	}
	return nil, fmt.Errorf("uuid plan cannot encode %T", value)
}
