// Package uuidcodec makes pgx send github.com/google/uuid values as binary
// uuids. Without it pgx goes through the type's driver.Valuer: it formats
// every uuid as text and PostgreSQL parses it back, which cost about 8% of
// the engine's CPU under load (uuid arrays are formatted element by
// element).
package uuidcodec

import (
	"context"

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
	m := conn.TypeMap()
	m.TryWrapEncodePlanFuncs = append([]pgtype.TryWrapEncodePlanFunc{tryWrapUUID}, m.TryWrapEncodePlanFuncs...)
}

// tryWrapUUID hands a uuid.UUID on as the [16]byte pgx encodes natively.
func tryWrapUUID(value any) (pgtype.WrappedEncodePlanNextSetter, any, bool) {
	if u, ok := value.(uuid.UUID); ok {
		return &uuidPlan{}, [16]byte(u), true
	}
	return nil, nil, false
}

type uuidPlan struct{ next pgtype.EncodePlan }

func (p *uuidPlan) SetNext(next pgtype.EncodePlan) { p.next = next }

func (p *uuidPlan) Encode(value any, buf []byte) ([]byte, error) {
	return p.next.Encode([16]byte(value.(uuid.UUID)), buf)
}
