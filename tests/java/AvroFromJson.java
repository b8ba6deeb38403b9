// What `avro-tools fromjson --codec deflate --schema-file S in.json` does, with the Java Avro
// library from Debian (avro-tools itself is not packaged): JSON records in, container file out.
import java.io.File;
import java.io.FileInputStream;
import java.io.InputStream;
import org.apache.avro.Schema;
import org.apache.avro.file.CodecFactory;
import org.apache.avro.file.DataFileWriter;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.JsonDecoder;

public class AvroFromJson {
  public static void main(String[] args) throws Exception {
    Schema schema = new Schema.Parser().parse(new File(args[0]));
    InputStream in = new FileInputStream(args[1]);
    String codec = args[3];
    GenericDatumReader<Object> reader = new GenericDatumReader<>(schema);
    DataFileWriter<Object> writer = new DataFileWriter<>(new GenericDatumWriter<>(schema));
    writer.setCodec(codec.equals("null") ? CodecFactory.nullCodec()
        : codec.equals("snappy") ? CodecFactory.snappyCodec() : CodecFactory.deflateCodec(6));
    writer.create(schema, new File(args[2]));
    JsonDecoder decoder = DecoderFactory.get().jsonDecoder(schema, in);
    try {
      while (true) {
        writer.append(reader.read(null, decoder));
      }
    } catch (java.io.EOFException end) {
      // all records read
    }
    writer.close();
  }
}
