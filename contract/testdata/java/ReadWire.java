// ReadWire reads Sagaflow's messages the way another team's Java service
// would: kafka-clients and Apicurio Registry's stock JSON Schema Kafka
// deserializer, configured for the Confluent wire format (a zero byte, the
// schema's 4-byte big-endian id, then the JSON). It prints one JSON line per
// record: topic, partition, offset, the schema id in the frame, the `type`
// header, and the payload as the deserializer returned it. It exits 0 once
// it has read COUNT records, 1 on a deserialization error or a timeout, 2 on
// bad arguments.
//
//   java -cp CLASSPATH ReadWire.java BROKERS REGISTRY COUNT TIMEOUT_SECONDS TOPIC...
//
// BROKERS is a bootstrap list (host:port,...); REGISTRY the registry's core
// API (e.g. http://127.0.0.1:18081/apis/registry/v3). Run it with ./run,
// which fetches the classpath.

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import io.apicurio.registry.rest.client.models.ProblemDetails;
import io.apicurio.registry.serde.jsonschema.JsonSchemaKafkaDeserializer;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Arrays;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

public class ReadWire {
    static final ObjectMapper JSON = new ObjectMapper();

    public static void main(String[] args) throws Exception {
        if (args.length < 5) {
            System.err.println("usage: ReadWire.java BROKERS REGISTRY COUNT TIMEOUT_SECONDS TOPIC...");
            System.exit(2);
        }
        String brokers = args[0], registry = args[1];
        int count = Integer.parseInt(args[2]);
        long deadline = System.nanoTime() + Duration.ofSeconds(Long.parseLong(args[3])).toNanos();
        var topics = Arrays.asList(args).subList(4, args.length);

        // The stock deserializer, set for the Confluent framing: the id is
        // read from the payload (not from headers) as 4 bytes, and it is the
        // registry's contentId, which Apicurio's Confluent-compatible API
        // returns when a schema is registered. Every payload is validated
        // against the schema the id names.
        var deserializer = new JsonSchemaKafkaDeserializer<JsonNode>();
        deserializer.configure(Map.of(
                "apicurio.registry.url", registry,
                "apicurio.registry.id-handler", "io.apicurio.registry.serde.Default4ByteIdHandler",
                "apicurio.registry.use-id", "contentId",
                "apicurio.registry.headers.enabled", "false",
                "apicurio.registry.serde.validation-enabled", "true"), false);

        // The consumer hands over the raw bytes so that the id in the frame
        // can be printed too; each value then goes through the deserializer
        // exactly as KafkaConsumer would call it.
        var props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
        props.put(ConsumerConfig.GROUP_ID_CONFIG, "sagaflow-read-wire-" + UUID.randomUUID());
        props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());

        int read = 0;
        try (var consumer = new KafkaConsumer<byte[], byte[]>(props)) {
            consumer.subscribe(topics);
            while (read < count) {
                if (System.nanoTime() > deadline) {
                    fail("timed out with " + read + " of " + count + " records read from " + topics);
                }
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(200))) {
                    if (read == count) {
                        break;
                    }
                    System.out.println(line(r, deserializer));
                    read++;
                }
            }
        }
        System.out.flush();
        System.exit(0); // the registry client's threads would keep the JVM up
    }

    static String line(ConsumerRecord<byte[], byte[]> r, JsonSchemaKafkaDeserializer<JsonNode> deserializer) throws Exception {
        String where = r.topic() + "/" + r.partition() + "@" + r.offset();
        byte[] v = r.value();
        if (v == null || v.length < 5 || v[0] != 0) {
            fail(where + ": not in the Confluent wire format");
        }
        JsonNode payload = null;
        try {
            payload = deserializer.deserialize(r.topic(), r.headers(), v);
        } catch (RuntimeException e) {
            String why = e.toString();
            for (Throwable c = e.getCause(); c != null; c = c.getCause()) {
                why += "; caused by " + c;
                if (c instanceof ProblemDetails p) { // the registry's answer
                    why += " (HTTP " + p.getStatus() + ": " + p.getDetail() + ")";
                }
            }
            fail(where + ": the deserializer refused it: " + why);
        }
        Header type = r.headers().lastHeader("type");
        var out = JSON.createObjectNode()
                .put("topic", r.topic())
                .put("partition", r.partition())
                .put("offset", r.offset())
                .put("schema_id", ByteBuffer.wrap(v, 1, 4).getInt())
                .put("type", type == null ? null : new String(type.value(), StandardCharsets.UTF_8));
        out.set("payload", payload);
        return JSON.writeValueAsString(out);
    }

    static void fail(String msg) {
        System.out.flush();
        System.err.println("ReadWire: " + msg);
        System.exit(1);
    }
}
