package uuidcodec

import (
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
)

// setup returns a type map with the codec registered, as RegisterConn
// leaves a connection's.
func setup(t *testing.T) *pgtype.Map {
	t.Helper()
	m := pgtype.NewMap()
	register(m)
	return m
}

// TestPlansAreBinary checks that uuids, pointers to them and slices of
// either are encoded by this package's plan, not through uuid.UUID's
// driver.Valuer (which formats each uuid as text, fails to encode the text
// in binary, parses it back and encodes again).
func TestPlansAreBinary(t *testing.T) {
	t.Parallel()
	u := uuid.New()
	for _, tc := range []struct {
		name  string
		value any
	}{
		{"uuid", u},
		{"pointer", &u},
		// pgx plans an array's elements with a zero value of their
		// type, and keeps the plan for every element of that type.
		{"nil pointer", (*uuid.UUID)(nil)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := setup(t)
			plan := m.PlanEncode(pgtype.UUIDOID, pgtype.BinaryFormatCode, tc.value)
			if _, ok := plan.(*uuidPlan); !ok {
				t.Fatalf("plan for %T is %T, want *uuidPlan", tc.value, plan)
			}
		})
	}
}

// TestArrayElementPlans checks that after a slice of pointers is planned,
// its elements still encode through this package's plan.
func TestArrayElementPlans(t *testing.T) {
	t.Parallel()
	m := setup(t)
	u := uuid.New()
	if _, err := m.Encode(pgtype.UUIDArrayOID, pgtype.BinaryFormatCode, []*uuid.UUID{&u, nil}, nil); err != nil {
		t.Fatalf("encode []*uuid.UUID: %v", err)
	}
	plan := m.PlanEncode(pgtype.UUIDOID, pgtype.BinaryFormatCode, &u)
	if _, ok := plan.(*uuidPlan); !ok {
		t.Fatalf("plan for an element of []*uuid.UUID is %T, want *uuidPlan", plan)
	}
}

// TestEncode checks the bytes: what PostgreSQL receives decodes to the
// uuids sent, nil pointers as NULL.
func TestEncode(t *testing.T) {
	t.Parallel()
	m := setup(t)
	a, b := uuid.New(), uuid.New()
	for _, tc := range []struct {
		name  string
		oid   uint32
		value any
		want  []pgtype.UUID
	}{
		{"uuid", pgtype.UUIDOID, a, []pgtype.UUID{{Bytes: a, Valid: true}}},
		{"pointer", pgtype.UUIDOID, &b, []pgtype.UUID{{Bytes: b, Valid: true}}},
		{"nil pointer", pgtype.UUIDOID, (*uuid.UUID)(nil), []pgtype.UUID{{}}},
		{"slice", pgtype.UUIDArrayOID, []uuid.UUID{a, b}, []pgtype.UUID{{Bytes: a, Valid: true}, {Bytes: b, Valid: true}}},
		{"slice of pointers", pgtype.UUIDArrayOID, []*uuid.UUID{&a, nil, &b}, []pgtype.UUID{{Bytes: a, Valid: true}, {}, {Bytes: b, Valid: true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buf, err := m.Encode(tc.oid, pgtype.BinaryFormatCode, tc.value, nil)
			if err != nil {
				t.Fatalf("encode %T: %v", tc.value, err)
			}
			var got []pgtype.UUID
			if tc.oid == pgtype.UUIDArrayOID {
				err = m.Scan(tc.oid, pgtype.BinaryFormatCode, buf, &got)
			} else {
				var one pgtype.UUID
				err = m.Scan(tc.oid, pgtype.BinaryFormatCode, buf, &one)
				got = []pgtype.UUID{one}
			}
			if err != nil {
				t.Fatalf("decode what %T encoded to: %v", tc.value, err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("decoded %d uuids, want %d", len(got), len(tc.want))
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("uuid %d: got %v, want %v", i, got[i], tc.want[i])
				}
			}
		})
	}
}

// BenchmarkEncodeHistoryIDs measures the encoding of the message ids of a
// saga's history rows (a uuid[] parameter of pointers, some nil).
func BenchmarkEncodeHistoryIDs(b *testing.B) {
	m := pgtype.NewMap()
	register(m)
	x, y := uuid.New(), uuid.New()
	ids := []*uuid.UUID{&x, nil, &y}
	var buf []byte
	for b.Loop() {
		var err error
		if buf, err = m.Encode(pgtype.UUIDArrayOID, pgtype.BinaryFormatCode, ids, buf[:0]); err != nil {
			b.Fatal(err)
		}
	}
}
