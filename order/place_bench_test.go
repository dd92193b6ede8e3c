package order_test

import (
	"context"
	"log/slog"
	"testing"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/saga"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// BenchmarkPlace places orders one after another on a pool of one
// connection, on an idle server: the time of a placement's transaction and
// its round trips (sends/op).
//
//	go test -run '^$' -bench Place -benchtime 3000x ./order/
func BenchmarkPlace(b *testing.B) {
	db := testenv.DB(b)
	pool, sends := testenv.CountedPool(b, db.URL)
	engine, err := saga.NewEngine(pool, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	svc := order.NewService(pool, engine, "order.events")
	if err := engine.Define(svc.NewDefinition(order.SagaConfig{Topics: kafkax.DefaultTopics()})); err != nil {
		b.Fatal(err)
	}
	req := &order.PlaceRequest{CustomerID: "c-1", Items: []order.Item{{SKU: "A", Quantity: 1}},
		Amount:          order.Amount{Value: 1000, Currency: "EUR"},
		ShippingAddress: order.Address{Name: "N", Line1: "1 Road", City: "Town", PostalCode: "1000", Country: "BE"}}
	ctx := context.Background()
	if _, err := svc.Place(ctx, uuid.NewString(), req); err != nil { // prepares the statements
		b.Fatal(err)
	}
	before := sends.N()
	for b.Loop() {
		if _, err := svc.Place(ctx, uuid.NewString(), req); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(sends.N()-before)/float64(b.N), "sends/op")
}
